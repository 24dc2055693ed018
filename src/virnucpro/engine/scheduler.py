"""Unit bookkeeping shared by every backend: what is pending, in flight, done or lost.

Workers pull units (dynamic balancing: a slow device simply pulls fewer). When a worker dies
with a unit in flight, the unit is retried up to ``max_retries`` times; after that a unit of
several sequences is split in halves (each tried once more, recursively) until the sequences
that keep killing workers are isolated and recorded as failed. With ``max_retries == 0`` a
lost unit is not retried: its sequences are reported missing (the engine's partial-failure
behaviour).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from virnucpro.engine.units import Unit


@dataclass
class LostUnit:
    """Sequences given up on, and why: ``failed`` (poison, isolated) or ``missing`` (no retry)."""

    unit: Unit
    reason: str
    kind: str  # "failed" or "missing"


@dataclass
class Scheduler:
    units: list[Unit]
    max_retries: int = 0
    pending: deque[Unit] = field(init=False)
    in_flight: dict[int, Unit] = field(default_factory=dict)
    done: dict[str, int] = field(default_factory=dict)  # key -> rank that committed it
    lost: list[LostUnit] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    splits: int = 0

    def __post_init__(self) -> None:
        self.pending = deque(self.units)

    def next_unit(self, rank: int) -> Unit | None:
        """Hand the next pending unit to ``rank`` (None when nothing is pending)."""
        if rank in self.in_flight:
            raise RuntimeError(f"rank {rank} already has unit {self.in_flight[rank].key}")
        if not self.pending:
            return None
        unit = self.pending.popleft()
        self.in_flight[rank] = unit
        return unit

    def completed(self, rank: int, key: str) -> None:
        unit = self.in_flight.pop(rank, None)
        if unit is None or unit.key != key:
            raise RuntimeError(f"rank {rank} reported unit {key}, which it was not given")
        self.done[key] = rank

    def returned(self, rank: int) -> None:
        """A worker gave its unit back without computing it (stop requested)."""
        unit = self.in_flight.pop(rank, None)
        if unit is not None:
            self.pending.appendleft(unit)

    def worker_lost(self, rank: int, reason: str) -> Unit | None:
        """A worker died: retry, split or give up its in-flight unit. Returns that unit."""
        unit = self.in_flight.pop(rank, None)
        if unit is None:
            return None
        tries = self.attempts.get(unit.key, 0) + 1
        self.attempts[unit.key] = tries
        budget = self._retry_budget(unit)
        if self.max_retries == 0:
            self.lost.append(LostUnit(unit, reason, "missing"))
        elif tries <= budget:
            self.retries += 1
            self.pending.appendleft(unit)
        elif len(unit) > 1:
            self.splits += 1
            first, second = unit.halves()
            self.pending.appendleft(second)
            self.pending.appendleft(first)
        else:
            self.lost.append(LostUnit(unit, reason, "failed"))
        return unit

    def _retry_budget(self, unit: Unit) -> int:
        # Whole units and single sequences get the full retry budget; halves made while
        # isolating a poison sequence are tried once each, so isolation costs log2(n) deaths.
        if "." in unit.key and len(unit) > 1:
            return 0
        return self.max_retries

    def abandon_pending(self, reason: str) -> None:
        """No worker is left: everything not done is missing."""
        for unit in list(self.in_flight.values()) + list(self.pending):
            self.lost.append(LostUnit(unit, reason, "missing"))
        self.in_flight.clear()
        self.pending.clear()

    @property
    def finished(self) -> bool:
        return not self.pending and not self.in_flight

    def lost_positions(self, kind: str) -> tuple[np.ndarray, list[str]]:
        """Positions lost of one kind with a reason for each."""
        positions: list[np.ndarray] = []
        reasons: list[str] = []
        for item in self.lost:
            if item.kind == kind:
                positions.append(item.unit.positions)
                reasons.extend([item.reason] * len(item.unit))
        if not positions:
            return np.zeros(0, np.int64), []
        return np.concatenate(positions).astype(np.int64), reasons
