"""Token-budget batches of length-sorted sequences.

A model that packs its batch (no padding; ``Embedder.packed``) computes the sum of the
lengths; a padded one computes ``count * longest``. Either way, sorting keeps neighbours of
similar length together, so padding (or, packed, the number of attention runs) stays small.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


def token_budget_batches(
    lengths: Sequence[int], tokens_per_batch: int, packed: bool = False
) -> Iterator[list[int]]:
    """Yield lists of indices into ``lengths``, longest first, each within the budget.

    A batch's cost is ``computed_slots``; a sequence longer than the budget forms a batch of
    its own. Every index is yielded exactly once.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    batch: list[int] = []
    longest = total = 0
    for i in order.tolist():
        n = int(lengths[i])
        width = max(longest, n)
        cost = total + n if packed else width * (len(batch) + 1)
        if batch and cost > tokens_per_batch:
            yield batch
            batch, width, total = [], n, 0
        batch.append(i)
        longest = width
        total += n
    if batch:
        yield batch


def computed_slots(lengths: Sequence[int], packed: bool = False) -> int:
    """Token slots a batch of these lengths computes: the sum if packed, else count * longest."""
    if not len(lengths):
        return 0
    return int(sum(lengths)) if packed else max(lengths) * len(lengths)
