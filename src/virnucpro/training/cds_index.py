"""Exact "is this protein a substring of one of the record's CDS translations?" in bulk.

The translations are joined with a separator no frame protein contains. Every position of the
joined text is keyed by its next 8 bytes (one big-endian uint64) and the keys are sorted once
per record, so a protein's candidate positions are the positions of its first 8 residues
(``searchsorted``) and each is confirmed with ``startswith``: exact, no false positive or
negative, and about log(n) per protein instead of a scan of every translation.
"""

from __future__ import annotations

import numpy as np

_K = 8  # bytes per key: one uint64
_SEP = b"\n"


class CdsIndex:
    """The CDS translations of one record, searchable for exact substrings."""

    def __init__(self, translations: list[bytes]) -> None:
        self.text = _SEP.join(translations)
        n = len(self.text) - _K + 1
        if n <= 0:
            self.keys = np.zeros(0, dtype=np.uint64)
            self.positions = np.zeros(0, dtype=np.int64)
            return
        data = np.frombuffer(self.text, dtype=np.uint8)
        keys = np.zeros(n, dtype=np.uint64)
        for j in range(_K):
            keys <<= np.uint64(8)
            keys |= data[j : j + n]
        self.positions = np.argsort(keys)
        self.keys = keys[self.positions]

    def contains(self, proteins: list[bytes]) -> list[bool]:
        """For each protein, whether it occurs inside one translation (separator excluded)."""
        found = [False] * len(proteins)
        long = [i for i, p in enumerate(proteins) if len(p) >= _K]
        for i, p in enumerate(proteins):
            if len(p) < _K:
                found[i] = bool(p) and p in self.text
        if not long or not len(self.keys):
            return found
        queries = np.array([int.from_bytes(proteins[i][:_K], "big") for i in long], dtype=np.uint64)
        lo = np.searchsorted(self.keys, queries, side="left").tolist()
        hi = np.searchsorted(self.keys, queries, side="right").tolist()
        text, positions = self.text, self.positions
        for i, a, b in zip(long, lo, hi, strict=True):
            if a < b:
                p = proteins[i]
                found[i] = any(text.startswith(p, int(s)) for s in positions[a:b])
        return found
