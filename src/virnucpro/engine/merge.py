"""Merge committed unit files into one HDF5 in input order, in bounded memory, then validate.

Vectors are written straight into contiguous, early-allocated HDF5 datasets through a memory
map at their file offsets, so the merge holds one unit at a time whatever the output size.
The file is built under a temporary name, validated, fsynced and only then renamed over the
final path: a crash leaves either the old output or the new one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from virnucpro.engine.unitfile import read_unit, read_unit_positions
from virnucpro.errors import ValidationError
from virnucpro.io.diskerrors import check_free_space, reserve
from virnucpro.models.base import per_token_dataset

ID_BLOCK = 100_000
CHECK_BLOCK_BYTES = 256 << 20


@dataclass
class MergeResult:
    path: Path
    count: int
    truncated: int
    failed_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    failed_reasons: list[str] = field(default_factory=list)


def committed_positions(unit_files: list[Path], n_index: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions embedded, positions recorded as failed) over all unit files.

    A position in two unit files is an error: every sequence is committed exactly once.
    """
    owner = np.full(n_index, -1, dtype=np.int64)
    failed: list[np.ndarray] = []
    for number, path in enumerate(unit_files):
        positions, failed_here = read_unit_positions(path)
        both = np.concatenate([positions, failed_here])
        clash = owner[both] >= 0
        if clash.any():
            other = unit_files[int(owner[both[clash][0]])]
            raise ValidationError(
                f"sequence position {int(both[clash][0])} is in both {path.name} and {other.name}"
            )
        owner[both] = number
        failed.append(failed_here)
    failed_all = np.sort(np.concatenate(failed)) if failed else np.zeros(0, np.int64)
    is_failed = np.zeros(n_index, dtype=bool)
    is_failed[failed_all] = True
    done = np.flatnonzero((owner >= 0) & ~is_failed)
    return done, failed_all


def _contiguous(group: h5py.Group, name: str, shape: tuple[int, ...], dtype) -> h5py.Dataset:
    """A contiguous dataset whose storage is allocated now, so its file offset is known."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple(shape)
    tid = h5py.h5t.py_create(np.dtype(dtype))
    dsid = h5py.h5d.create(group.id, name.encode(), tid, space, dcpl=dcpl)
    return h5py.Dataset(dsid)


def _strings(values) -> np.ndarray:
    return np.array(list(values), dtype=h5py.string_dtype("utf-8"))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temporaries(output: Path) -> None:
    """Delete the ``.NAME.tmp-PID`` file of a merge whose process was killed (output-sized)."""
    for path in output.parent.glob(f".{output.name}.tmp-*"):
        pid = path.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def merge_units(
    index,
    unit_files: list[Path],
    output: Path,
    *,
    outputs: list[str],
    dim: int,
    per_token: bool,
    attrs: dict,
) -> MergeResult:
    """Write ``output`` holding exactly the sequences of ``unit_files``, in input order."""
    unit_files = sorted(unit_files)
    done, _ = committed_positions(unit_files, len(index))
    n = int(done.size)
    row_of = np.full(len(index), -1, dtype=np.int64)
    row_of[done] = np.arange(n, dtype=np.int64)
    remove_stale_temporaries(output)
    tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
    try:
        token_total = 0
        offsets = None
        if per_token:
            counts = np.zeros(n, dtype=np.int64)
            for path in unit_files:
                with h5py.File(path, "r") as f:
                    counts[row_of[f["positions"][()]]] = f["per_token_sizes"][()]
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            token_total = int(offsets[-1])
        # the whole output, before the HDF5 library writes a byte (it may crash on a full disk)
        need = 4 * dim * (n * len(outputs) + token_total) + 64 * n
        check_free_space(output.parent, need, output)
        with h5py.File(tmp, "w") as f:
            ids_ds = f.create_dataset("ids", shape=(n,), dtype=h5py.string_dtype("utf-8"))
            for start in range(0, n, ID_BLOCK):
                block = done[start : start + ID_BLOCK]
                ids_ds[start : start + block.size] = _strings(index.ids[p] for p in block.tolist())
            lengths = f.create_dataset(
                "lengths", data=np.asarray(index.lengths)[done].astype(np.int64)
            )
            f.create_dataset("truncated", shape=(n,), dtype=bool)
            vector_sets = {name: _contiguous(f, name, (n, dim), np.float32) for name in outputs}
            token_offset = {}
            if per_token:  # one per-token dataset per output (every requested layer)
                for name in outputs:
                    ds = _contiguous(f, per_token_dataset(name), (token_total, dim), np.float32)
                    token_offset[name] = ds.id.get_offset()
                f.create_dataset("per_token_offsets", data=offsets)
            offsets_in_file = {name: ds.id.get_offset() for name, ds in vector_sets.items()}
            del lengths
        reserve(tmp)  # every block now: a full disk is an error here, never a SIGBUS later
        layout = _Layout(tmp, n, dim, row_of, offsets_in_file, token_offset, offsets, token_total)
        truncated, failed_positions, failed_reasons = _write_vectors(layout, unit_files)
        with h5py.File(tmp, "r+") as f:
            f["truncated"][...] = truncated
            for key, value in attrs.items():
                f.attrs[key] = value
            f.attrs["count"] = n
            f.attrs["truncated_count"] = int(truncated.sum())
        validate_output(tmp, [index.ids[p] for p in done.tolist()], outputs=outputs, dim=dim)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, output)
        fd = os.open(output.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        if tmp.exists():
            tmp.unlink()
    fp = np.concatenate(failed_positions) if failed_positions else np.zeros(0, np.int64)
    return MergeResult(output, n, int(truncated.sum()), fp, failed_reasons)


@dataclass(frozen=True)
class _Layout:
    """Where the merge writes: the temporary file, its row of every index position, and the
    byte offsets of its early-allocated contiguous datasets (memory-mapped)."""

    path: Path
    rows: int
    dim: int
    row_of: np.ndarray  # index position -> output row (-1: not in the output)
    vector_offsets: dict[str, int | None]  # dataset name -> byte offset in the file
    token_offset: dict[str, int | None]  # output -> its per-token dataset, with --per-token
    token_bounds: np.ndarray | None  # per_token rows of output row i: [i], [i + 1]
    token_rows: int


def _write_vectors(
    layout: _Layout, unit_files: list[Path]
) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
    """Copy every unit's vectors to its rows; return (truncated flags, failed positions and
    reasons recorded in the units)."""
    n, dim = layout.rows, layout.dim
    truncated = np.zeros(n, dtype=bool)
    failed_positions: list[np.ndarray] = []
    failed_reasons: list[str] = []
    maps = {
        name: np.memmap(layout.path, dtype="<f4", mode="r+", offset=offset, shape=(n, dim))
        for name, offset in layout.vector_offsets.items()
        if offset is not None
    }
    token_maps = {
        name: np.memmap(
            layout.path, dtype="<f4", mode="r+", offset=offset, shape=(layout.token_rows, dim)
        )
        for name, offset in layout.token_offset.items()
        if offset is not None
    }
    bounds = layout.token_bounds
    for path in unit_files:
        unit = read_unit(path)
        rows = layout.row_of[unit.positions]
        truncated[rows] = unit.truncated
        for name, array in unit.vectors.items():
            if name not in maps:
                if n:
                    raise ValidationError(f"unit file {path} has an unexpected output {name!r}")
                continue
            if array.shape[1] != dim:
                raise ValidationError(
                    f"unit file {path}: {name} has width {array.shape[1]}, expected {dim}"
                )
            maps[name][rows] = array
        for name, token_map in token_maps.items():
            if unit.per_token is None or name not in unit.per_token:
                if rows.size:
                    raise ValidationError(f"unit file {path} has no per-token vectors of {name}")
                continue
            for row, block in zip(rows.tolist(), unit.per_token[name], strict=True):
                token_map[bounds[row] : bounds[row + 1]] = block
        if unit.failed_positions.size:
            failed_positions.append(unit.failed_positions)
            failed_reasons.extend(unit.failed_reasons)
    for m in list(maps.values()) + list(token_maps.values()):
        m.flush()
        del m
    return truncated, failed_positions, failed_reasons


def validate_output(path: Path, expected_ids: list[str], *, outputs: list[str], dim: int) -> None:
    """Count, duplicates, missing and unexpected ids, shapes and finiteness; raise on failure."""
    with h5py.File(path, "r") as f:
        ids = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
        expected = len(expected_ids)
        if len(ids) != expected or ids != list(expected_ids):
            got = set(ids)
            missing = [i for i in expected_ids if i not in got]
            extra = sorted(got.difference(expected_ids))
            dupes = len(ids) - len(got)
            raise ValidationError(
                f"{path.name}: {len(ids)} ids for {expected} expected sequences; "
                f"{len(missing)} missing (first: {', '.join(missing[:5]) or '-'}), "
                f"{len(extra)} unexpected, {dupes} duplicated"
            )
        if len(set(ids)) != len(ids):
            raise ValidationError(f"{path.name}: duplicate ids")
        for name in outputs:
            ds = f[name]
            if ds.shape != (expected, dim):
                raise ValidationError(
                    f"{path.name}: {name} has shape {ds.shape}, expected {(expected, dim)}"
                )
            step = max(1, CHECK_BLOCK_BYTES // max(1, dim * 4))
            for start in range(0, expected, step):
                block = ds[start : start + step]
                if not np.isfinite(block).all():
                    bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                    raise ValidationError(
                        f"{path.name}: {name} row {bad} ({ids[bad]}) is not finite"
                    )
