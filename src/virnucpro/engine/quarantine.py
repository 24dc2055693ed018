"""Check every committed unit file when a run starts; move the bad ones to work/quarantine/.

A unit file is bad when it is unreadable or truncated, does not match its checksum (which
covers every dataset), was computed for another job (job tag), or names positions or ids that
are not this index's. Its sequences are then simply not committed, so the run recomputes them.
Temporaries of unit writes cut short on this host (``.KEY.h5.tmp-HOST-PID``, dead PID) are
removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro.engine.unitfile import UnitCheck, verify_unit
from virnucpro.errors import ValidationError
from virnucpro.io.pids import pid_alive

log = logging.getLogger("virnucpro.engine")


@dataclass(frozen=True)
class Quarantined:
    file: str  # the unit file's name
    moved_to: str  # its path under work/quarantine/
    reason: str

    def record(self) -> dict:
        return {"file": self.file, "moved_to": self.moved_to, "reason": self.reason}


def check_units(units_dir: Path, quarantine_dir: Path, index, job: str) -> list[Quarantined]:
    """Verify every unit file in ``units_dir`` against ``index`` and the job tag ``job``."""
    if not units_dir.is_dir():
        return []
    remove_stale_unit_temporaries(units_dir)
    owner = np.full(len(index), -1, dtype=np.int64)
    files = sorted(p for p in units_dir.glob("*.h5") if not p.name.startswith("."))
    moved: list[Quarantined] = []
    for number, path in enumerate(files):
        reason = _problem(number, files, index, job, owner)
        if reason is None:
            continue
        moved.append(_move(path, quarantine_dir, reason))
    if moved:
        log.warning(
            "%d damaged or foreign unit file(s) moved to %s; their sequences are computed "
            "again (first: %s: %s)",
            len(moved),
            quarantine_dir,
            moved[0].file,
            moved[0].reason,
        )
    return moved


def _problem(number: int, files: list[Path], index, job: str, owner: np.ndarray) -> str | None:
    """Why ``files[number]`` cannot be used, or None (then its positions are marked owned)."""
    path = files[number]
    try:
        check: UnitCheck = verify_unit(path)
    except ValidationError as exc:
        return str(exc)
    if check.job != job:
        return "it was computed for another job"
    if check.key != path.stem:
        return f"it holds unit {check.key!r}, not {path.stem!r}"
    both = np.concatenate([check.positions, check.failed_positions])
    if both.size and (int(both.min()) < 0 or int(both.max()) >= len(index)):
        return "its positions are outside this job's index"
    if len(check.ids) != check.positions.size or any(
        index.ids[int(p)] != rid for p, rid in zip(check.positions.tolist(), check.ids, strict=True)
    ):
        return "its ids are not this job's ids at its positions"
    clash = owner[both] >= 0
    if clash.any():
        other = files[int(owner[both[clash][0]])].name
        return f"sequence position {int(both[clash][0])} is also in {other}"
    owner[both] = number
    return None


def _move(path: Path, quarantine_dir: Path, reason: str) -> Quarantined:
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    target = quarantine_dir / path.name
    n = 1
    while target.exists():
        target = quarantine_dir / f"{path.stem}.{n}{path.suffix}"
        n += 1
    shutil.move(str(path), str(target))
    log.warning("unit file %s moved to %s: %s", path.name, target, reason)
    return Quarantined(path.name, str(target), reason)


def remove_stale_unit_temporaries(units_dir: Path) -> None:
    """Delete ``.KEY.h5.tmp-HOST-PID`` files of this host whose writer is gone."""
    host = socket.gethostname()
    for path in units_dir.glob(".*.h5.tmp-*"):
        stem, _, pid = path.name.rpartition("-")
        if not pid.isdigit() or not stem.endswith(f"tmp-{host}"):
            continue
        if int(pid) != os.getpid() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)
