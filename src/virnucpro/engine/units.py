"""Work units: contiguous ranges of the length-sorted order, sized by tokens.

A unit is the grain of scheduling and of every recovery: it is computed by one worker and
committed as one file. The plan depends only on the data and the token parameters, never on
the number of workers, so a run's output and its resumability do not depend on them either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_UNITS = 16  # aim for at least this many units when the data allows it (balance)
MAX_BATCHES_PER_UNIT = 8


@dataclass(frozen=True)
class Unit:
    """A named set of index positions (longest first) that one worker turns into one file."""

    key: str
    positions: np.ndarray  # int64 positions into the SequenceIndex (input order numbering)
    tokens: int  # planned token count (special tokens included)

    def __len__(self) -> int:
        return int(self.positions.size)

    def halves(self) -> tuple[Unit, Unit]:
        """Split in two (used to isolate a sequence that keeps failing)."""
        mid = len(self) // 2
        a, b = self.positions[:mid], self.positions[mid:]
        share = self.tokens * mid // max(len(self), 1)
        return (
            Unit(f"{self.key}.0", a, share),
            Unit(f"{self.key}.1", b, self.tokens - share),
        )


def default_unit_tokens(total_tokens: int, tokens_per_batch: int) -> int:
    """Unit size: about total/16, at least one batch, at most eight batches."""
    return int(
        min(
            max(total_tokens // MIN_UNITS, tokens_per_batch),
            MAX_BATCHES_PER_UNIT * tokens_per_batch,
        )
    )


def plan_units(order: np.ndarray, costs: np.ndarray, unit_tokens: int) -> list[Unit]:
    """Cut ``order`` (positions, longest first) into units of about ``unit_tokens`` tokens.

    ``costs[p]`` is the planned token count of position ``p``. Every position lands in
    exactly one unit; the units keep the order's sequence.
    """
    if unit_tokens <= 0:
        raise ValueError("unit_tokens must be positive")
    order = np.asarray(order, dtype=np.int64)
    if order.size == 0:
        return []
    sorted_costs = np.asarray(costs, dtype=np.int64)[order]
    cumulative = np.cumsum(sorted_costs)
    units: list[Unit] = []
    start = 0
    consumed = 0
    n = order.size
    while start < n:
        # first index whose running total reaches this unit's share
        stop = int(np.searchsorted(cumulative, consumed + unit_tokens, side="left")) + 1
        stop = max(start + 1, min(stop, n))
        tokens = int(cumulative[stop - 1] - consumed)
        units.append(Unit(f"u{len(units):06d}", order[start:stop].copy(), tokens))
        consumed = int(cumulative[stop - 1])
        start = stop
    return units


def unit_plan_digest(units: list[Unit]) -> str:
    """A short digest of a plan (keys and positions), to detect a changed plan on resume."""
    import hashlib

    h = hashlib.sha256()
    for unit in units:
        h.update(unit.key.encode())
        h.update(unit.positions.astype("<i8").tobytes())
    return h.hexdigest()
