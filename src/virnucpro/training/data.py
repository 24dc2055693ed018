"""Training rows read from the stage HDF5 files in bounded memory.

The dataset table (DATA_DIR/dataset.tsv) says which frame is in which split with which label;
the two stage files (DNABERT-S and ESM-2 embeddings, the engine's merged HDF5) hold the
vectors. Rows are joined BY ID. A split is cut into blocks of ``block_rows`` consecutive file
rows; an epoch visits the blocks in a seeded random order, ``window_blocks`` blocks at a time,
and shuffles the rows of each window before cutting batches. At most one window of features
(``block_rows * window_blocks`` rows) is in memory, whatever the number of rows.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from virnucpro.errors import InputError, ValidationError
from virnucpro.reader import _default_dataset

LABEL_INDEX = {"other": 0, "viral": 1}  # class 0 = others, class 1 = virus (SPEC 1.4)
BLOCK_ROWS = 4096
WINDOW_BLOCKS = 8


@dataclass
class Split:
    """One split's examples: their rows in both files (sorted by ESM-2 row) and labels."""

    ids: np.ndarray  # str ids, in ESM-2 row order
    esm_rows: np.ndarray  # int64, increasing
    dna_rows: np.ndarray  # int64
    labels: np.ndarray  # int64, 0 others / 1 virus

    def __len__(self) -> int:
        return len(self.labels)


def _id_rows(f: h5py.File, path: Path) -> dict[str, int]:
    ids = f["ids"].asstr()[()]
    rows = {s: i for i, s in enumerate(ids)}
    if len(rows) != len(ids):
        raise ValidationError(f"{path}: duplicate ids in the embeddings file")
    return rows


def read_table(table: Path) -> tuple[list[str], list[str], list[str]]:
    """(ids, labels, splits) of dataset.tsv, checked."""
    ids, labels, splits = [], [], []
    with open(table, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        for column in ("id", "label", "split"):
            if column not in (reader.fieldnames or []):
                raise InputError(f"{table}: no column {column!r} (not a make-dataset table?)")
        for line, row in enumerate(reader, start=2):
            if row["label"] not in LABEL_INDEX or row["split"] not in ("train", "validation"):
                raise InputError(
                    f"{table} line {line}: label {row['label']!r} / split {row['split']!r} "
                    "(expected viral|other and train|validation)"
                )
            ids.append(row["id"])
            labels.append(row["label"])
            splits.append(row["split"])
    return ids, labels, splits


class FeatureRows:
    """Both stage files, opened once; examples of each split joined by id."""

    def __init__(self, table: Path, dna_h5: Path, esm_h5: Path) -> None:
        self.dna_file = h5py.File(dna_h5, "r")
        self.esm_file = h5py.File(esm_h5, "r")
        self.dna = self.dna_file[_default_dataset(self.dna_file)]
        self.esm = self.esm_file[_default_dataset(self.esm_file)]
        self.dna_dim, self.esm_dim = int(self.dna.shape[1]), int(self.esm.shape[1])
        self.width = self.dna_dim + self.esm_dim
        ids, labels, splits = read_table(table)
        dna_rows, esm_rows = _id_rows(self.dna_file, dna_h5), _id_rows(self.esm_file, esm_h5)
        for name, rows, path in (("DNABERT-S", dna_rows, dna_h5), ("ESM-2", esm_rows, esm_h5)):
            missing = [i for i in ids if i not in rows]
            if missing or len(rows) != len(ids):
                raise ValidationError(
                    f"{path}: the {name} embeddings hold {len(rows)} rows for {len(ids)} frames "
                    f"of {table}" + (f" (no row for {missing[0]!r})" if missing else "")
                )
        self.splits: dict[str, Split] = {}
        for split in ("train", "validation"):
            chosen = [i for i, s in enumerate(splits) if s == split]
            esm = np.array([esm_rows[ids[i]] for i in chosen], dtype=np.int64)
            order = np.argsort(esm, kind="stable")
            self.splits[split] = Split(
                ids=np.array([ids[i] for i in chosen], dtype=object)[order],
                esm_rows=esm[order],
                dna_rows=np.array([dna_rows[ids[i]] for i in chosen], dtype=np.int64)[order],
                labels=np.array([LABEL_INDEX[labels[i]] for i in chosen], dtype=np.int64)[order],
            )
        if sum(len(s) for s in self.splits.values()) != len(ids):
            raise ValidationError(f"{table}: rows lost while splitting (internal error)")

    def close(self) -> None:
        self.dna_file.close()
        self.esm_file.close()

    def read(self, split: Split, start: int, stop: int) -> np.ndarray:
        """Features (stop - start, width) float32 of the examples [start, stop) of ``split``."""
        out = np.empty((stop - start, self.width), dtype=np.float32)
        out[:, : self.dna_dim] = _gather(self.dna, split.dna_rows[start:stop])
        out[:, self.dna_dim :] = _gather(self.esm, split.esm_rows[start:stop])
        return out

    def blocks(self, split: Split, block_rows: int = BLOCK_ROWS) -> Iterator[tuple[int, int]]:
        """(start, stop) of each block of ``split``, in file order."""
        for start in range(0, len(split), block_rows):
            yield start, min(start + block_rows, len(split))

    def shuffled_windows(
        self,
        split: Split,
        rng: np.random.Generator,
        block_rows: int = BLOCK_ROWS,
        window_blocks: int = WINDOW_BLOCKS,
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(features, labels) windows: blocks in a random order, rows shuffled in a window."""
        blocks = list(self.blocks(split, block_rows))
        order = rng.permutation(len(blocks))
        for w in range(0, len(order), window_blocks):
            parts = [blocks[b] for b in order[w : w + window_blocks]]
            x = np.concatenate([self.read(split, a, b) for a, b in parts])
            y = np.concatenate([split.labels[a:b] for a, b in parts])
            perm = rng.permutation(len(y))
            yield x[perm], y[perm]


def _gather(data: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """``data[rows]`` in the given order: one slab read when the rows are near-contiguous."""
    if rows.size == 0:
        return np.zeros((0, data.shape[1]), np.float32)
    lo, hi = int(rows.min()), int(rows.max()) + 1
    if hi - lo <= 2 * rows.size:
        return data[lo:hi][rows - lo]
    order = np.argsort(rows, kind="stable")
    got = data[rows[order]]  # h5py point selection needs increasing rows
    out = np.empty_like(got)
    out[order] = got
    return out


def batches(
    windows: Iterator[tuple[np.ndarray, np.ndarray]], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Cut a stream of windows into batches of ``batch_size`` rows (the last may be short)."""
    carry_x: np.ndarray | None = None
    carry_y: np.ndarray | None = None
    for x, y in windows:
        if carry_x is not None and len(carry_y):
            x, y = np.concatenate([carry_x, x]), np.concatenate([carry_y, y])
        full = len(y) - len(y) % batch_size
        for start in range(0, full, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        carry_x, carry_y = x[full:], y[full:]
    if carry_y is not None and len(carry_y):
        yield carry_x, carry_y
