"""Read an embeddings HDF5 written by virnucpro (plain h5py works too; see docs/FORMATS.md)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def _default_dataset(f: h5py.File) -> str:
    if "embeddings" in f:
        return "embeddings"
    layered = [name for name in f if name.startswith("embeddings_layer_")]
    if not layered:
        raise KeyError(f"{f.filename} holds no embeddings dataset")
    return max(layered, key=lambda name: int(name.rsplit("_", 1)[1]))  # 12 over 6


def read_embeddings(path: str | Path, dataset: str | None = None) -> tuple[list[str], np.ndarray]:
    """All ids and the (N, D) float32 matrix of ``dataset`` (default: ``embeddings``, or the
    deepest ``embeddings_layer_L`` when several layers were stored)."""
    with h5py.File(path, "r") as f:
        name = dataset or _default_dataset(f)
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
        return ids, f[name][()]


class EmbeddingsFile:
    """Random access by id: ``with EmbeddingsFile(path) as e: e["seq1"]``."""

    def __init__(self, path: str | Path, dataset: str | None = None) -> None:
        self._file = h5py.File(path, "r")
        self.dataset = dataset or _default_dataset(self._file)
        ids = self._file["ids"][()]
        self.ids = [s.decode() if isinstance(s, bytes) else s for s in ids]
        self._row = {id_: row for row, id_ in enumerate(self.ids)}
        self.attrs = dict(self._file.attrs)

    def __enter__(self) -> EmbeddingsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, seq_id: str) -> bool:
        return seq_id in self._row

    def __getitem__(self, seq_id: str) -> np.ndarray:
        try:
            row = self._row[seq_id]
        except KeyError:
            raise KeyError(f"{seq_id!r} is not in {self._file.filename}") from None
        return self._file[self.dataset][row]

    def per_token(self, seq_id: str, layer: int | None = None) -> np.ndarray:
        """Per-residue vectors of one sequence (files written with --per-token), of ``layer``
        (its number, as in ``embeddings_layer_L``; files with several layers) or of this
        file's dataset."""
        row = self._row[seq_id]
        offsets = self._file["per_token_offsets"]
        name = "per_token" + self.dataset[len("embeddings") :]
        if layer is not None:
            name = f"per_token_layer_{layer}"
            if name not in self._file:
                raise KeyError(f"{self._file.filename} holds no per-token vectors of layer {layer}")
        return self._file[name][offsets[row] : offsets[row + 1]]
