"""Committed unit files: ids, index positions and vectors of one unit, stored together.

A unit file is written to a temporary name, fsynced and renamed, so it either exists whole
or not at all. A sha256 over its arrays is stored and checked when the merge reads it.
"""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from virnucpro.errors import ValidationError
from virnucpro.models.base import per_token_dataset

FORMAT_VERSION = 1


@dataclass
class UnitResult:
    """Everything a unit produced, rows aligned: ids[i], positions[i] and vectors[*][i]."""

    key: str
    positions: np.ndarray  # int64
    ids: list[str]
    lengths: np.ndarray  # int64 residues
    truncated: np.ndarray  # bool
    vectors: dict[str, np.ndarray]  # output name -> float32 (n, dim)
    per_token: dict[str, list[np.ndarray]] | None = None  # output -> (L_i, dim) per row
    failed_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    failed_reasons: list[str] = field(default_factory=list)  # why each failed position failed

    def __len__(self) -> int:
        return int(self.positions.size)


def _digest(result: UnitResult) -> str:
    h = hashlib.sha256()
    h.update(result.positions.astype("<i8").tobytes())
    h.update("\n".join(result.ids).encode())
    h.update(result.failed_positions.astype("<i8").tobytes())
    for name in sorted(result.vectors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(result.vectors[name], dtype="<f4").tobytes())
    return h.hexdigest()


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=h5py.string_dtype("utf-8")).reshape(len(values))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def unit_path(units_dir: Path, key: str) -> Path:
    return units_dir / f"{key}.h5"


def write_unit(units_dir: Path, result: UnitResult) -> Path:
    """Commit a unit atomically (temporary file, fsync, rename, directory fsync)."""
    n = len(result)
    if len(result.ids) != n or any(v.shape[0] != n for v in result.vectors.values()):
        raise ValueError(f"unit {result.key}: ids, positions and vectors are not aligned")
    final = unit_path(units_dir, result.key)
    tmp = units_dir / f".{result.key}.h5.tmp-{socket.gethostname()}-{os.getpid()}"  # shared storage
    with h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["unit"] = result.key
        f.attrs["count"] = n
        f.attrs["sha256"] = _digest(result)
        f.create_dataset("positions", data=result.positions.astype(np.int64))
        f.create_dataset("ids", data=_strings(result.ids), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("lengths", data=result.lengths.astype(np.int64))
        f.create_dataset("truncated", data=result.truncated.astype(bool))
        f.create_dataset("failed_positions", data=result.failed_positions.astype(np.int64))
        f.create_dataset(
            "failed_reasons", data=_strings(result.failed_reasons), dtype=h5py.string_dtype("utf-8")
        )
        group = f.create_group("vectors")
        for name, array in result.vectors.items():
            group.create_dataset(name, data=np.ascontiguousarray(array, dtype=np.float32))
        if result.per_token is not None:
            sizes = None
            for name, blocks in result.per_token.items():
                here = np.array([t.shape[0] for t in blocks], dtype=np.int64)
                if len(blocks) != n or (sizes is not None and not np.array_equal(here, sizes)):
                    raise ValueError(f"unit {result.key}: per-token rows of {name} not aligned")
                sizes = here
                dim = blocks[0].shape[1] if blocks else 0
                flat = (
                    np.concatenate(blocks).astype(np.float32)
                    if blocks
                    else np.zeros((0, dim), np.float32)
                )
                f.create_dataset(per_token_dataset(name), data=flat)
            f.create_dataset(
                "per_token_sizes", data=np.zeros(0, np.int64) if sizes is None else sizes
            )
        f.flush()
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    fd = os.open(units_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return final


def read_unit(path: Path, *, verify: bool = True) -> UnitResult:
    """Read a committed unit; with ``verify`` its checksum must match its contents."""
    try:
        with h5py.File(path, "r") as f:
            key = str(f.attrs["unit"])
            ids = [_text(s) for s in f["ids"][()]]
            vectors = {name: f["vectors"][name][()] for name in f["vectors"]}
            per_token = None
            if "per_token_sizes" in f:
                sizes = f["per_token_sizes"][()]
                per_token = {}
                for name in vectors:
                    flat = f[per_token_dataset(name)][()]
                    per_token[name] = np.split(flat, np.cumsum(sizes)[:-1]) if sizes.size else []
            result = UnitResult(
                key=key,
                positions=f["positions"][()],
                ids=ids,
                lengths=f["lengths"][()],
                truncated=f["truncated"][()],
                vectors=vectors,
                per_token=per_token,
                failed_positions=f["failed_positions"][()],
                failed_reasons=[_text(s) for s in f["failed_reasons"][()]],
            )
            stored = str(f.attrs["sha256"])
    except (OSError, KeyError) as exc:
        raise ValidationError(f"unit file {path} is unreadable or incomplete: {exc}") from exc
    if verify and _digest(result) != stored:
        raise ValidationError(f"unit file {path} does not match its checksum")
    return result


def read_unit_positions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(embedded positions, failed positions) of a committed unit, without its vectors."""
    try:
        with h5py.File(path, "r") as f:
            return f["positions"][()], f["failed_positions"][()]
    except (OSError, KeyError) as exc:
        raise ValidationError(f"unit file {path} is unreadable or incomplete: {exc}") from exc
