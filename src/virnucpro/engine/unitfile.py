"""Committed unit files: ids, index positions and vectors of one unit, stored together.

A unit file is written to a temporary name, fsynced and renamed, so it either exists whole
or not at all. A sha256 over EVERY dataset it holds (and its key and job tag) is stored;
``verify_unit`` recomputes it block by block when a run starts, and the merge checks it again.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from virnucpro.errors import ValidationError
from virnucpro.io.diskerrors import check_free_space, disk_error, is_disk_error
from virnucpro.models.base import per_token_dataset

FORMAT_VERSION = 2  # 2: the checksum covers every dataset, the key and the job tag
HASH_BLOCK_BYTES = 32 << 20  # rows are hashed in blocks of about this size
IN_MEMORY_BYTES = 256 << 20  # units up to this size are built in memory, then written


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


class _Digest:
    """sha256 over named arrays, fed whole or block by block (the same bytes either way)."""

    def __init__(self, key: str, job: str) -> None:
        self.h = hashlib.sha256(f"virnucpro-unit-v{FORMAT_VERSION}\0{key}\0{job}\0".encode())

    def array(self, name: str, data, dtype: str) -> None:
        """``data``: a numpy array or an h5py dataset (read in blocks of rows)."""
        shape = tuple(int(d) for d in data.shape)
        self.h.update(f"{name}\0{dtype}\0{shape}\0".encode())
        rows = shape[0] if shape else 0
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
        step = max(1, HASH_BLOCK_BYTES // max(1, row_bytes))
        for start in range(0, rows, step):
            block = np.asarray(data[start : start + step])
            self.h.update(np.ascontiguousarray(block, dtype=dtype).tobytes())

    def strings(self, name: str, values) -> None:
        items = [_text(v) for v in values]
        self.h.update(f"{name}\0{len(items)}\0".encode())
        self.h.update("\n".join(items).encode())

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def _digest(result: UnitResult, job: str) -> str:
    d = _Digest(result.key, job)
    d.array("positions", result.positions, "<i8")
    d.strings("ids", result.ids)
    d.array("lengths", result.lengths, "<i8")
    d.array("truncated", np.asarray(result.truncated, bool), "u1")
    d.array("failed_positions", result.failed_positions, "<i8")
    d.strings("failed_reasons", result.failed_reasons)
    for name in sorted(result.vectors):
        d.array(f"vectors/{name}", result.vectors[name], "<f4")
    if result.per_token is not None:
        sizes = None
        for name in sorted(result.per_token):
            blocks = result.per_token[name]
            if sizes is None:
                sizes = np.array([t.shape[0] for t in blocks], dtype=np.int64)
                d.array("per_token_sizes", sizes, "<i8")
            dim = blocks[0].shape[1] if blocks else 0
            dataset = per_token_dataset(name)
            d.h.update(f"{dataset}\0<f4\0{(int(sizes.sum()), dim)}\0".encode())
            for block in blocks:
                d.h.update(np.ascontiguousarray(block, dtype="<f4").tobytes())
        if sizes is None:
            d.array("per_token_sizes", np.zeros(0, np.int64), "<i8")
    return d.hexdigest()


def _file_digest(f: h5py.File) -> str:
    """The checksum of an open unit file, recomputed from its datasets block by block."""
    d = _Digest(_text(f.attrs["unit"]), _text(f.attrs.get("job", "")))
    d.array("positions", f["positions"], "<i8")
    d.strings("ids", f["ids"][()])
    d.array("lengths", f["lengths"], "<i8")
    d.array("truncated", f["truncated"], "u1")
    d.array("failed_positions", f["failed_positions"], "<i8")
    d.strings("failed_reasons", f["failed_reasons"][()])
    for name in sorted(f["vectors"]):
        d.array(f"vectors/{name}", f["vectors"][name], "<f4")
    if "per_token_sizes" in f:
        d.array("per_token_sizes", f["per_token_sizes"], "<i8")
        for name in sorted(f["vectors"]):
            d.array(per_token_dataset(name), f[per_token_dataset(name)], "<f4")
    return d.hexdigest()


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=h5py.string_dtype("utf-8")).reshape(len(values))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def unit_path(units_dir: Path, key: str) -> Path:
    return units_dir / f"{key}.h5"


def write_unit(units_dir: Path, result: UnitResult, *, job: str = "") -> Path:
    """Commit a unit atomically (temporary file, fsync, rename, directory fsync).

    ``job`` tags the unit with the job that computed it (a foreign unit is refused on resume).
    A full or read-only disk raises DiskError naming the folder; nothing is left behind.
    """
    n = len(result)
    if len(result.ids) != n or any(v.shape[0] != n for v in result.vectors.values()):
        raise ValueError(f"unit {result.key}: ids, positions and vectors are not aligned")
    final = unit_path(units_dir, result.key)
    tmp = units_dir / f".{result.key}.h5.tmp-{socket.gethostname()}-{os.getpid()}"  # shared storage
    try:
        needed = _nbytes(result)
        check_free_space(units_dir, needed)
        if needed <= IN_MEMORY_BYTES:
            _write_image(tmp, result, job)
        else:
            _write(tmp, result, job)
        os.replace(tmp, final)
        fd = os.open(units_dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and is_disk_error(exc):
            raise disk_error(exc, units_dir, needed=_nbytes(result)) from None
        raise
    return final


def _nbytes(result: UnitResult) -> int:
    size = sum(v.nbytes for v in result.vectors.values()) + 24 * len(result) + 4096
    blocks = (result.per_token or {}).values()
    return size + sum(t.nbytes for per_output in blocks for t in per_output)


def _write_image(tmp: Path, result: UnitResult, job: str) -> None:
    """Build the HDF5 file in memory, then write its bytes with plain file writes: a full disk
    is then an ordinary OSError (the HDF5 library can crash when a write of its own fails)."""
    image = io.BytesIO()
    _write(image, result, job)
    with open(tmp, "wb") as fh:
        fh.write(image.getbuffer())
        fh.flush()
        os.fsync(fh.fileno())


def _write(tmp: Path | io.BytesIO, result: UnitResult, job: str) -> None:
    n = len(result)
    with h5py.File(tmp, "w") as f:
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["unit"] = result.key
        f.attrs["job"] = job
        f.attrs["count"] = n
        f.attrs["sha256"] = _digest(result, job)
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
    if isinstance(tmp, Path):
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())


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
            job = _text(f.attrs.get("job", ""))
    except (OSError, KeyError) as exc:
        raise ValidationError(f"unit file {path} is unreadable or incomplete: {exc}") from exc
    if verify and _digest(result, job) != stored:
        raise ValidationError(f"unit file {path} does not match its checksum")
    return result


def read_unit_positions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(embedded positions, failed positions) of a committed unit, without its vectors."""
    try:
        with h5py.File(path, "r") as f:
            return f["positions"][()], f["failed_positions"][()]
    except (OSError, KeyError) as exc:
        raise ValidationError(f"unit file {path} is unreadable or incomplete: {exc}") from exc


@dataclass(frozen=True)
class UnitCheck:
    """What ``verify_unit`` found in a committed unit file (read block by block)."""

    key: str
    job: str
    positions: np.ndarray
    failed_positions: np.ndarray
    ids: list[str]


def verify_unit(path: Path) -> UnitCheck:
    """Recompute a unit file's checksum over every dataset; ValidationError when it is
    unreadable, truncated, of another format or does not match."""
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("format_version", 0))
            if version != FORMAT_VERSION:
                raise ValidationError(f"format version {version}, expected {FORMAT_VERSION}")
            if _file_digest(f) != _text(f.attrs["sha256"]):
                raise ValidationError("its contents do not match its checksum")
            return UnitCheck(
                key=_text(f.attrs["unit"]),
                job=_text(f.attrs.get("job", "")),
                positions=f["positions"][()].astype(np.int64),
                failed_positions=f["failed_positions"][()].astype(np.int64),
                ids=[_text(s) for s in f["ids"][()]],
            )
    except ValidationError:
        raise
    except Exception as exc:  # noqa: BLE001 - any damage the HDF5 library reports
        raise ValidationError(f"unreadable or incomplete ({type(exc).__name__}: {exc})") from None
