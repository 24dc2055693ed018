"""What a run directory computes, and the records that let a job resume or be merged.

``work/job.json``           the job (inputs, model spec), its status and how many runs it took
``work/shards/IofN.json``   one record per ``--shard I/N`` run: status and what it lost
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

from virnucpro._version import __version__
from virnucpro.engine.claim import read_record
from virnucpro.engine.rundir import RunDir
from virnucpro.errors import VirnucproError
from virnucpro.io.atomic import atomic_write_json
from virnucpro.models.base import EmbedderSpec


def describe_job(index, spec: EmbedderSpec) -> dict:
    """The fields that decide the numbers: inputs (with a content fingerprint) and model."""
    return {
        "inputs": [{"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns} for f in index.files],
        "input_fingerprint": index.fingerprint(),
        "model": spec.fingerprint_fields(),
    }


def model_identity(model: dict) -> dict:
    """The model fields that decide the numbers. When the weights' checksum is known the name
    is left out: the same weights given by a relative or an absolute path are the same model."""
    fields = dict(model)
    if fields.get("checksum"):
        fields.pop("name", None)
    return fields


def job_tag(description: dict) -> str:
    """A short tag of the job's identity (input content and model), stored in its unit files."""
    identity = {
        "inputs": description["input_fingerprint"],
        "model": model_identity(description["model"]),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


def differences(old: dict, new: dict) -> list[str]:
    changes = []
    if old.get("input_fingerprint") != new["input_fingerprint"]:
        changes.append("the input files changed")
    before, after = model_identity(old.get("model", {})), model_identity(new["model"])
    if before != after:
        keys = [k for k in new["model"] if before.get(k) != after.get(k)]
        changes.append(f"the model changed ({', '.join(keys)})")
    return changes


class JobState:
    """Reads and writes ``work/job.json`` and the shard records of one run directory."""

    def __init__(self, rd: RunDir) -> None:
        self.rd = rd
        self.shards_dir = rd.work / "shards"
        self.previous: dict | None = None
        self.damaged: VirnucproError | None = None  # an unreadable job.json
        if rd.job.exists() or rd.job.is_symlink():
            try:
                self.previous = read_record(rd.job)
            except VirnucproError as exc:
                self.damaged = exc

    def check(self, description: dict, restart: bool) -> None:
        """Refuse to mix results of a different job; with ``restart`` wipe them instead."""
        if self.damaged is not None and not restart:
            raise self.damaged
        if self.previous is None and self.damaged is None:
            return
        if restart:
            self.damaged = None
            remove_own(self.rd.units, "*.h5")  # only what virnucpro wrote there
            remove_own(self.shards_dir, "*of*.json")
            shutil.rmtree(self.rd.work / "merge", ignore_errors=True)  # merge.MERGE_STATE
            (self.rd.root / f".{self.rd.output.name}.partial").unlink(missing_ok=True)
            self.rd.units.mkdir(parents=True, exist_ok=True)
            for path in (self.rd.output, self.rd.missing, self.rd.failed, self.rd.report):
                path.unlink(missing_ok=True)
            self.previous = None
            return
        changes = differences(self.previous.get("job", {}), description)
        if changes:
            raise VirnucproError(
                f"{self.rd.root} holds results of a different job: {'; '.join(changes)}. Nothing "
                "was overwritten. Re-run with --restart to discard them, or choose another "
                "output directory"
            )

    @property
    def complete(self) -> bool:
        return bool(
            self.previous and self.previous.get("status") == "complete" and self.rd.output.exists()
        )

    @property
    def runs(self) -> int:
        return int((self.previous or {}).get("runs", 0))

    def start(self, description: dict, spec: EmbedderSpec) -> int:
        """Record a new run of the job; returns its number (1 for the first)."""
        number = self.runs + 1
        self.write(description, spec, "running", runs=number)
        return number

    def write(
        self,
        description: dict,
        spec: EmbedderSpec,
        status: str,
        *,
        runs: int,
        report: dict | None = None,
    ) -> None:
        record = {
            "status": status,
            "job": description,
            "spec": asdict(spec),
            "runs": runs,
            "version": __version__,
        }
        if report is not None:
            record["report"] = report
        atomic_write_json(self.rd.job, record)
        self.previous = record

    def spec(self) -> EmbedderSpec:
        if self.damaged is not None:
            raise self.damaged
        if not self.previous:
            raise VirnucproError(f"{self.rd.root} holds no virnucpro job (no {self.rd.job.name})")
        data = dict(self.previous["spec"])
        data["layers"] = tuple(data["layers"])
        return EmbedderSpec(**data)

    # -- shards ------------------------------------------------------------------------------
    def shard_path(self, shard: tuple[int, int]) -> Path:
        return self.shards_dir / f"{shard[0]}of{shard[1]}.json"

    def write_shard(
        self,
        shard: tuple[int, int],
        status: str,
        missing: np.ndarray,
        reasons: list[str],
        counts: dict,
    ) -> None:
        self.shards_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(
            self.shard_path(shard),
            {
                "shard": list(shard),
                "status": status,
                "counts": counts,
                "missing_positions": [int(p) for p in missing],
                "missing_reasons": reasons,
            },
        )

    def shard_records(self) -> list[dict]:
        if not self.shards_dir.exists():
            return []
        return [read_record(p, "shard record") for p in sorted(self.shards_dir.glob("*of*.json"))]


def remove_own(folder: Path, pattern: str) -> None:
    """Remove ``folder``'s files named like ``pattern`` and their temporaries (``.*.tmp-*``);
    then ``folder`` itself if nothing else is left in it."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and (fnmatch(path.name, pattern) or ".tmp-" in path.name):
            path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something that is not ours is left: keep it
        pass


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` with 0 <= I < N."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise VirnucproError(
            f"--shard must look like I/N (for example 0/4), not {text!r}"
        ) from None
    if n < 1 or not 0 <= i < n:
        raise VirnucproError(f"--shard {text}: need 0 <= I < N")
    return i, n
