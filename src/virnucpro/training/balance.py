"""Balancing the two classes over their groups, and the validation split by record.

Balance: ``N = min(viral frames, other frames, --max-per-class)`` frames per class. Within a
class, group g (an input file, or a manifest group) with ``f_g`` of the class's ``F`` frames
gets ``N * f_g / F`` of them, rounded by largest remainder so that the quotas sum to N exactly
(each is the floor or the ceiling of its exact share); its frames are drawn uniformly without
replacement with a generator seeded by (seed, class, group number).

Split: per class, the records that keep at least one frame are shuffled (seeded) and taken in
that order into the validation side while they fit in ``round(fraction * frames)``; if none
fits, the smallest record goes. The training side always keeps at least one record, so every
record is wholly on one side.
"""

from __future__ import annotations

import math

import numpy as np

from virnucpro.errors import InputError

_SAMPLE, _SPLIT = 0, 1


def quotas(frames: list[int], total: int) -> list[int]:
    """Largest-remainder shares of ``total`` in proportion to ``frames`` (ties: earlier group)."""
    available = sum(frames)
    if total > available:
        raise ValueError(f"cannot take {total} of {available} frames")
    if available == 0:
        return [0] * len(frames)
    exact = [total * f / available for f in frames]
    shares = [math.floor(e) for e in exact]
    order = sorted(range(len(frames)), key=lambda g: (-(exact[g] - shares[g]), g))
    for g in order[: total - sum(shares)]:
        shares[g] += 1
    return shares


def sample(frames: int, take: int, seed: int, label: int, group: int) -> np.ndarray:
    """Boolean mask of the ``take`` frames (of ``frames``) one group contributes."""
    mask = np.zeros(frames, dtype=bool)
    if take >= frames:
        mask[:] = True
        return mask
    rng = np.random.default_rng([seed, _SAMPLE, label, group])
    mask[rng.choice(frames, size=take, replace=False)] = True
    return mask


def split_records(
    per_record: dict[int, int], fraction: float, seed: int, label: int, name: str
) -> set[int]:
    """The records (keys of ``per_record``: record -> selected frames) of the validation side."""
    if len(per_record) < 2:
        raise InputError(
            f"the {name} class is too small for the split: its frames come from "
            f"{len(per_record)} record(s), and a split by record needs at least 2 (one per side)"
            "; add inputs"
        )
    total = sum(per_record.values())
    target = min(max(1, math.floor(fraction * total + 0.5)), total - 1)
    records = sorted(per_record)
    rng = np.random.default_rng([seed, _SPLIT, label])
    shuffled = [records[i] for i in rng.permutation(len(records)).tolist()]
    chosen: set[int] = set()
    held = 0
    for r in shuffled:
        if held + per_record[r] <= target:
            chosen.add(r)
            held += per_record[r]
            if held == target:
                break
    if not chosen:
        chosen.add(min(shuffled, key=lambda r: per_record[r]))
    return chosen
