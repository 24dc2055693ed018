"""Token-budget batches: length-sorted sequences packed so padding stays small."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def token_budget_batches(lengths: Sequence[int], tokens_per_batch: int) -> Iterator[list[int]]:
    """Yield lists of indices into ``lengths``, longest first, each within the budget.

    A batch's cost is its padded size, ``count * longest``; a sequence longer than the
    budget forms a batch of its own. Every index is yielded exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batch: list[int] = []
    longest = 0
    for i in order.tolist():
        n = int(lengths[i])
        width = max(longest, n)
        if batch and width * (len(batch) + 1) > tokens_per_batch:
            yield batch
            batch, width = [], n
        batch.append(i)
        longest = width
    if batch:
        yield batch


def padded_slots(lengths: Sequence[int]) -> int:
    """Token slots a padded batch of these lengths computes."""
    return max(lengths) * len(lengths) if len(lengths) else 0
