"""Join DNABERT-S and ESM-2 vectors BY ID into classifier features, block by block."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from virnucpro.errors import VirnucproError
from virnucpro.reader import _default_dataset

BLOCK_ROWS = 16384


@dataclass
class FeatureBlock:
    ids: list[str]  # frame ids, in the order given
    features: np.ndarray  # (n, dna_dim + protein_dim) float32: concat(DNABERT-S, ESM-2)


def _in_blocks(ids: Sequence[str]) -> Iterator[list[str]]:
    """``ids`` a block at a time (an index's id table is decoded block by block)."""
    span = getattr(ids, "span", None)
    for start in range(0, len(ids), BLOCK_ROWS):
        yield span(start, start + BLOCK_ROWS) if span else list(ids[start : start + BLOCK_ROWS])


class _Rows:
    """The ids of one embeddings file as a stream of (row, id), and slab reads of its rows.

    Rows are matched to frames BY ID in one forward pass: a stage's output holds its frames
    in frame order (the engine writes input order), so each frame is either the stream's
    next id or absent from the file. An id left over at the end means the file is not in
    frame order: that is an error, never a silent mismatch."""

    def __init__(self, path: Path | None, prefix: str = "") -> None:
        self.path, self.prefix = path, prefix
        self.file = h5py.File(path, "r") if path is not None else None
        self.dim = 0
        if self.file is not None:
            self.data = self.file[_default_dataset(self.file)]
            self.dim = int(self.data.shape[1])

    def stream(self) -> Iterator[tuple[int, str]]:
        if self.file is None:
            return
        ids, cut = self.file["ids"], len(self.prefix)
        for start in range(0, int(ids.shape[0]), BLOCK_ROWS):
            for row, s in enumerate(ids.asstr()[start : start + BLOCK_ROWS].tolist(), start):
                if s.startswith(self.prefix):
                    yield row, s[cut:]

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Rows in the given order, read as one slab (rows are near-contiguous here)."""
        if rows.size == 0:
            return np.zeros((0, self.dim), np.float32)
        lo, hi = int(rows.min()), int(rows.max()) + 1
        return self.data[lo:hi][rows - lo]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _Cursor:
    """Walks one file's id stream along the frames: ``row(frame)`` is its row or None."""

    def __init__(self, rows: _Rows) -> None:
        self.rows, self.stream = rows, rows.stream()
        self.next = next(self.stream, None)

    def row(self, frame: str) -> int | None:
        if self.next is not None and self.next[1] == frame:
            row = self.next[0]
            self.next = next(self.stream, None)
            return row
        return None

    def finish(self) -> None:
        if self.next is not None:
            raise VirnucproError(
                f"{self.rows.path}: id {self.next[1]!r} (row {self.next[0]}) is not among the "
                "frames or not in frame order; the stage output does not belong to this run"
            )


def _walk(frame_ids: Sequence[str], dna: _Rows, protein: _Rows):
    """(frame, DNABERT-S row or None, ESM-2 row or None) for every frame, in order."""
    a, b = _Cursor(dna), _Cursor(protein)
    for block in _in_blocks(frame_ids):
        for frame in block:
            yield frame, a.row(frame), b.row(frame)
    a.finish()
    b.finish()


def joined_features(
    frame_ids: Sequence[str], dna_h5: Path | None, protein_h5: Path | None, prefix: str = ""
) -> tuple[Iterator[FeatureBlock], dict[str, str], tuple[int, int]]:
    """Features for every frame present in BOTH files, in ``frame_ids`` order.

    Returns (blocks, unscored frame id -> reason, (dna_dim, protein_dim)). Rows are paired by
    id, never by position, in a streaming pass (memory per block, not per frame). With
    ``prefix`` only the files' ids that start with it are used, with the prefix removed (the
    rows of one sample in a samplesheet run).
    """
    dna, protein = _Rows(dna_h5, prefix), _Rows(protein_h5, prefix)
    unscored: dict[str, str] = {}
    for frame, d, p in _walk(frame_ids, dna, protein):
        if d is None or p is None:
            missing = [name for name, row in (("DNABERT-S", d), ("ESM-2", p)) if row is None]
            unscored[frame] = f"no {' and no '.join(missing)} embedding"

    def blocks() -> Iterator[FeatureBlock]:
        try:
            ids: list[str] = []
            rows: tuple[list[int], list[int]] = ([], [])
            for frame, d, p in _walk(frame_ids, dna, protein):
                if d is None or p is None:
                    continue
                ids.append(frame)
                rows[0].append(d)
                rows[1].append(p)
                if len(ids) == BLOCK_ROWS:
                    yield _block(ids, rows, dna, protein)
                    ids, rows = [], ([], [])
            if ids:
                yield _block(ids, rows, dna, protein)
        finally:
            dna.close()
            protein.close()

    return blocks(), unscored, (dna.dim, protein.dim)


def _block(ids: list[str], rows, dna: _Rows, protein: _Rows) -> FeatureBlock:
    d = dna.gather(np.array(rows[0], dtype=np.int64))
    p = protein.gather(np.array(rows[1], dtype=np.int64))
    return FeatureBlock(ids, np.concatenate([d, p], axis=1).astype(np.float32))
