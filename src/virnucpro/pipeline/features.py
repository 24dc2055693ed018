"""Join DNABERT-S and ESM-2 vectors BY ID into classifier features, block by block."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from virnucpro.reader import _default_dataset

BLOCK_ROWS = 16384


@dataclass
class FeatureBlock:
    ids: list[str]  # frame ids, in the order given
    features: np.ndarray  # (n, dna_dim + protein_dim) float32: concat(DNABERT-S, ESM-2)


class _Rows:
    """Id -> row lookup and slab reads of one embeddings file."""

    def __init__(self, path: Path | None, prefix: str = "") -> None:
        self.file = h5py.File(path, "r") if path is not None else None
        self.row: dict[str, int] = {}
        self.dim = 0
        if self.file is not None:
            ids = self.file["ids"].asstr()[()]
            cut = len(prefix)
            self.row = {s[cut:]: i for i, s in enumerate(ids) if s.startswith(prefix)}
            self.data = self.file[_default_dataset(self.file)]
            self.dim = int(self.data.shape[1])

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the given order, read as one slab (rows are near-contiguous here)."""
        if rows.size == 0:
            return np.zeros((0, self.dim), np.float32)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return self.data[lo:hi][rows - lo]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def joined_features(
    frame_ids: Sequence[str], dna_h5: Path | None, protein_h5: Path | None, prefix: str = ""
) -> tuple[Iterator[FeatureBlock], dict[str, str], tuple[int, int]]:
    """Features for every frame present in BOTH files, in ``frame_ids`` order.

    Returns (blocks, unscored frame id -> reason, (dna_dim, protein_dim)). Rows are paired by
    id, never by position. With ``prefix`` only the files' ids that start with it are used, with
    the prefix removed (the rows of one sample in a samplesheet run).
    """
    dna, protein = _Rows(dna_h5, prefix), _Rows(protein_h5, prefix)
    unscored: dict[str, str] = {}
    for frame in frame_ids:
        in_dna, in_protein = frame in dna.row, frame in protein.row
        if not (in_dna and in_protein):
            missing = [
                name for name, ok in (("DNABERT-S", in_dna), ("ESM-2", in_protein)) if not ok
            ]
            unscored[frame] = f"no {' and no '.join(missing)} embedding"

    def blocks() -> Iterator[FeatureBlock]:
        try:
            kept = [f for f in frame_ids if f not in unscored]
            for start in range(0, len(kept), BLOCK_ROWS):
                ids = kept[start : start + BLOCK_ROWS]
                d = dna.gather(np.array([dna.row[i] for i in ids], dtype=np.int64))
                p = protein.gather(np.array([protein.row[i] for i in ids], dtype=np.int64))
                yield FeatureBlock(ids, np.concatenate([d, p], axis=1).astype(np.float32))
        finally:
            dna.close()
            protein.close()

    return blocks(), unscored, (dna.dim, protein.dim)
