"""``--retry-failed``: sequences isolated as failed by an earlier run become pending again.

Failed sequences are committed as failure rows of unit files (poison sequences in
``{key}-failed.h5`` records, out-of-memory-alone ones inside ordinary units), so a plain
resume skips them. This removes those rows: a record with nothing else is deleted, an
ordinary unit is rewritten without them (atomically, with a fresh checksum).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from virnucpro.engine.unitfile import read_unit, read_unit_positions, write_unit

log = logging.getLogger("virnucpro.engine")


def forget_failures(units_dir: Path) -> int:
    """Make every failed sequence of ``units_dir`` pending again; returns how many."""
    count = 0
    for path in sorted(Path(units_dir).glob("*.h5")):
        if path.name.startswith("."):
            continue
        _, failed = read_unit_positions(path)
        if not failed.size:
            continue
        unit = read_unit(path)
        count += int(failed.size)
        if len(unit) == 0:
            path.unlink()
        else:
            cleared = replace(unit, failed_positions=np.zeros(0, np.int64), failed_reasons=[])
            write_unit(Path(units_dir), cleared)
    if count:
        log.info("--retry-failed: %d failed sequence(s) will be computed again", count)
    return count
