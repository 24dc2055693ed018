"""Merge committed unit files into one HDF5 in input order, in bounded memory, then validate.

Vectors are written straight into contiguous, early-allocated HDF5 datasets through a memory
map at their file offsets, so the merge holds one unit at a time whatever the output size.
The file is built under a temporary name, validated, fsynced and only then renamed over the
final path: a crash leaves either the old output or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from virnucpro.engine.unitfile import read_unit, read_unit_positions
from virnucpro.errors import ValidationError
from virnucpro.io.diskerrors import check_free_space, reserve
from virnucpro.io.pids import pid_alive
from virnucpro.models.base import per_token_dataset

ID_BLOCK = 16_384  # ids per block: bounded memory whatever the number of sequences
CHECK_BLOCK_BYTES = 32 << 20  # finiteness checked this many bytes (<= CHECK_ROWS rows) at a time
CHECK_ROWS = 65_536


@dataclass
class MergeResult:
    path: Path
    count: int
    truncated: int
    failed_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    failed_reasons: list[str] = field(default_factory=list)
    peak_disk: int = 0  # bytes, with ``disk_root``


def committed_positions(
    unit_files: list[Path], n_index: int, merged: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(positions embedded, positions recorded as failed) over all unit files.

    A position in two unit files is an error: every sequence is committed exactly once.
    ``merged``: positions already copied into a partial output by an interrupted merge whose
    unit files were removed (``merged_positions``); a unit may still hold some of them (the
    merge was killed between marking its rows and removing it).
    """
    owner = np.full(n_index, -1, dtype=np.int32)  # 4 bytes per sequence, no Python objects
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
    is_done = owner >= 0
    del owner
    is_done[failed_all] = False
    if merged is not None and merged.size:
        is_done[merged] = True
    return np.flatnonzero(is_done), failed_all


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


def remove_stale_temporaries(output: Path) -> None:
    """Delete the ``.NAME.tmp-PID`` file of a merge whose process was killed (output-sized)."""
    for path in output.parent.glob(f".{output.name}.tmp-*"):
        pid = path.name.rsplit("-", 1)[1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)


def disk_bytes(path: Path) -> int:
    """Bytes a file or folder takes on disk (allocated blocks; 0 when it does not exist)."""
    total = 0
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not os.path.isdir(path):
        return st.st_blocks * 512
    for root, dirs, files in os.walk(path):
        for name in files + dirs:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except FileNotFoundError:
                pass  # removed meanwhile
    return total


MERGE_STATE = "merge"  # work/merge/: what an interrupted merge already copied (see below)
_KILL_AFTER = "VIRNUCPRO_TEST_MERGE_KILL_AFTER"  # test hook: SIGKILL after N consumed units


def merged_positions(state_dir: Path | None) -> np.ndarray:
    """Positions an interrupted, unit-consuming merge already holds in its partial output."""
    if state_dir is None or not (state_dir / "meta.json").is_file():
        return np.zeros(0, np.int64)
    rows = np.load(state_dir / "rows.npy", mmap_mode="r")
    progress = np.load(state_dir / "progress.npy", mmap_mode="r")
    return np.asarray(rows[np.flatnonzero(progress)], dtype=np.int64)


def partial_path(output: Path) -> Path:
    """The stable name of the output while a unit-consuming merge builds it."""
    return output.parent / f".{output.name}.partial"


def merged_shape(output: Path) -> tuple[list[str], int] | None:
    """(vector datasets, width) of the partial output of an interrupted merge (or of the
    output it already became), for a resume whose unit files were all consumed."""
    for path in (partial_path(output), output):
        if not path.is_file():
            continue
        try:
            with h5py.File(path, "r") as f:
                names = [k for k in f if k == "embeddings" or k.startswith("embeddings_layer_")]
                if names:
                    return names, int(f[names[0]].shape[1])
        except OSError:
            continue
    return None


def clear_merge_state(state_dir: Path | None) -> None:
    """Forget the merge state (after the job is recorded complete, or on --restart)."""
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)


@dataclass
class _Target:
    """The file being merged into and the per-row progress (1 merged, 2 merged + truncated)."""

    path: Path
    done: np.ndarray  # index positions of the output rows, ascending
    progress: np.ndarray  # uint8 per row; a memory map in work/merge/ when consuming
    merge_id: str
    resumed: bool
    finished: bool = False  # an earlier merge already renamed it into place


def _prepare(index, unit_files, output, state_dir, consume: bool) -> _Target:
    """A fresh target, or (consuming) the partial output of a merge that was killed."""
    partial = partial_path(output)
    merged = merged_positions(state_dir) if consume else None
    done, _ = committed_positions(unit_files, len(index), merged)
    if consume and (state_dir / "meta.json").is_file():
        meta = json.loads((state_dir / "meta.json").read_text())
        rows = np.load(state_dir / "rows.npy", mmap_mode="r")
        same = rows.shape == done.shape and bool(np.array_equal(rows, done))
        if same and partial.is_file() and merged is not None and merged.size:
            progress = np.load(state_dir / "progress.npy", mmap_mode="r+")
            return _Target(partial, done, progress, meta["id"], resumed=True)
        if same and _finished(output, meta["id"]):
            progress = np.load(state_dir / "progress.npy", mmap_mode="r")
            return _Target(output, done, progress, meta["id"], resumed=True, finished=True)
        if merged is not None and merged.size:
            raise ValidationError(
                f"an interrupted merge in {state_dir} holds {merged.size} sequences whose unit "
                f"files are gone, but its partial output {partial.name} is missing or does not "
                "match; re-run with --restart"
            )
        clear_merge_state(state_dir)
    merge_id = os.urandom(8).hex()
    if not consume:
        tmp = output.parent / f".{output.name}.tmp-{os.getpid()}"
        return _Target(tmp, done, np.zeros(done.size, np.uint8), merge_id, resumed=False)
    partial.unlink(missing_ok=True)
    scratch = state_dir.parent / f".{state_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    np.save(scratch / "rows.npy", done)
    np.lib.format.open_memmap(scratch / "progress.npy", "w+", np.uint8, (done.size,)).flush()
    (scratch / "meta.json").write_text(json.dumps({"id": merge_id, "rows": int(done.size)}))
    _fsync_tree(scratch)
    os.replace(scratch, state_dir)
    progress = np.load(state_dir / "progress.npy", mmap_mode="r+")
    return _Target(partial, done, progress, merge_id, resumed=False)


def _finished(output: Path, merge_id: str) -> bool:
    if not output.is_file():
        return False
    try:
        with h5py.File(output, "r") as f:
            return f.attrs.get("merge_id") == merge_id
    except OSError:
        return False


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def merge_units(
    index,
    unit_files: list[Path],
    output: Path,
    *,
    outputs: list[str],
    dim: int,
    per_token: bool,
    attrs: dict,
    consume: Path | None = None,
    disk_root: Path | None = None,
) -> MergeResult:
    """Write ``output`` holding exactly the sequences of ``unit_files``, in input order.

    ``consume`` (a complete run): the folder of the merge state (``work/merge``); each unit
    file is removed as soon as its rows are in the partial output (data fsynced, then its rows
    marked in ``progress.npy``, fsynced, then the unit removed), so the merge needs about one
    output of disk, and a merge killed at any point resumes from the partial output
    (``merged_positions`` counts the rows it holds as committed). The caller clears the state
    once the job is recorded complete. ``disk_root``: measure the peak disk use of that folder
    during the merge (``MergeResult.peak_disk``).
    """
    unit_files = sorted(unit_files)
    consuming = consume is not None
    remove_stale_temporaries(output)
    target = _prepare(index, unit_files, output, consume, consuming)
    meter = _DiskMeter(disk_root, target.path)
    if target.finished:
        for path in unit_files:
            path.unlink(missing_ok=True)
        truncated = int(np.count_nonzero(np.asarray(target.progress) == 2))
        return MergeResult(output, int(target.done.size), truncated, peak_disk=meter.peak)
    done = target.done
    n = int(done.size)
    try:
        if not target.resumed:
            _create(target.path, index, unit_files, done, outputs, dim, per_token)
        layout = _layout(target.path, done, dim, outputs)
        meter.sample()
        failed_positions, failed_reasons = _write_vectors(
            layout, unit_files, target.progress, remove=consuming, meter=meter
        )
        if not np.all(target.progress):
            missing = int(np.count_nonzero(target.progress == 0))
            raise ValidationError(
                f"{target.path.name}: {missing} rows were never written (a unit file is missing)"
            )
        truncated = np.asarray(target.progress) == 2
        with h5py.File(target.path, "r+") as f:
            f["truncated"][...] = truncated
            for key, value in attrs.items():
                f.attrs[key] = value
            f.attrs["count"] = n
            f.attrs["truncated_count"] = int(truncated.sum())
            f.attrs["merge_id"] = target.merge_id
        validate_output(target.path, _expected_ids(index, done), n, outputs=outputs, dim=dim)
        with open(target.path, "rb+") as handle:
            os.fsync(handle.fileno())
        meter.sample()
        os.replace(target.path, output)
        _fsync_dir(output.parent)
    finally:
        if not consuming and target.path.exists():
            target.path.unlink()
    fp = np.concatenate(failed_positions) if failed_positions else np.zeros(0, np.int64)
    return MergeResult(output, n, int(truncated.sum()), fp, failed_reasons, peak_disk=meter.peak)


class _DiskMeter:
    """Peak disk use of a run folder during a merge, sampled after every unit (one walk at
    the start, then only the target file's growth and the units removed are tracked)."""

    def __init__(self, root: Path | None, target: Path) -> None:
        self.root, self.target = root, target
        self.base = disk_bytes(root) if root is not None else 0
        self.target_start = disk_bytes(target)
        self.removed = 0
        self.peak = self.base

    def sample(self) -> None:
        if self.root is None:
            return
        now = self.base - self.removed + disk_bytes(self.target) - self.target_start
        self.peak = max(self.peak, now)

    def removing(self, size: int) -> None:
        self.removed += size


def ids_at(index, positions: np.ndarray) -> list[str]:
    """The ids at ascending ``positions``: one decode of the span they cover when it is dense
    (a complete run: consecutive positions), else one lookup each."""
    if not positions.size:
        return []
    first, last = int(positions[0]), int(positions[-1]) + 1
    ids = index.ids
    if last - first <= 4 * positions.size and hasattr(ids, "span"):
        span = ids.span(first, last)
        if last - first == positions.size:
            return span
        return [span[p] for p in (positions - first).tolist()]
    return [ids[p] for p in positions.tolist()]


def _expected_ids(index, done: np.ndarray):
    def block(start: int, stop: int) -> list[str]:
        return ids_at(index, done[start:stop])

    return block


def _create(path, index, unit_files, done, outputs, dim, per_token) -> None:
    """The output file with ids, lengths and every dataset allocated (contiguous); the space
    it needs is checked before the HDF5 library writes a byte (it may crash on a full disk)."""
    n = int(done.size)
    offsets = None
    token_total = 0
    if per_token:
        counts = np.zeros(n, dtype=np.int64)
        for unit in unit_files:
            with h5py.File(unit, "r") as u:
                counts[np.searchsorted(done, u["positions"][()])] = u["per_token_sizes"][()]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        token_total = int(offsets[-1])
    need = 4 * dim * (n + token_total) * len(outputs) + 64 * n
    check_free_space(path.parent, need, path)
    with h5py.File(path, "w") as f:
        ids_ds = f.create_dataset("ids", shape=(n,), dtype=h5py.string_dtype("utf-8"))
        for start in range(0, n, ID_BLOCK):
            block = done[start : start + ID_BLOCK]
            ids_ds[start : start + block.size] = _strings(ids_at(index, block))
        lengths = f.create_dataset("lengths", shape=(n,), dtype=np.int64)
        for start in range(0, n, ID_BLOCK):
            block = done[start : start + ID_BLOCK]
            lengths[start : start + block.size] = np.asarray(index.lengths[block], np.int64)
        f.create_dataset("truncated", shape=(n,), dtype=bool)
        for name in outputs:
            _contiguous(f, name, (n, dim), np.float32)
        if per_token:  # one per-token dataset per output (every requested layer)
            for name in outputs:
                _contiguous(f, per_token_dataset(name), (int(offsets[-1]), dim), np.float32)
            f.create_dataset("per_token_offsets", data=offsets)
    reserve(path)  # every block now: a full disk is an error here, never a SIGBUS later


def _layout(path: Path, done: np.ndarray, dim: int, outputs: list[str]) -> _Layout:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValidationError(
            f"{path}: the partial output of an interrupted merge is unreadable ({exc}); "
            "re-run with --restart"
        ) from None
    with f:
        vector_offsets = {name: f[name].id.get_offset() for name in outputs}
        token_offset: dict[str, int | None] = {}
        token_rows = None
        bounds = None
        if "per_token_offsets" in f:
            for name in outputs:
                token_offset[name] = f[per_token_dataset(name)].id.get_offset()
                token_rows = int(f[per_token_dataset(name)].shape[0])
            bounds = f["per_token_offsets"][()]
    return _Layout(path, done, dim, vector_offsets, token_offset, bounds, token_rows or 0)


@dataclass(frozen=True)
class _Layout:
    """Where the merge writes: the target file, the index position of every output row, and
    the byte offsets of its early-allocated contiguous datasets (memory-mapped)."""

    path: Path
    done: np.ndarray  # index position of each output row, ascending
    dim: int
    vector_offsets: dict[str, int | None]  # dataset name -> byte offset in the file
    token_offset: dict[str, int | None]  # output -> its per-token dataset, with --per-token
    token_bounds: np.ndarray | None  # per_token rows of output row i: [i], [i + 1]
    token_rows: int

    @property
    def rows(self) -> int:
        return int(self.done.size)

    def rows_of(self, positions: np.ndarray, path: Path) -> np.ndarray:
        rows = np.searchsorted(self.done, positions)
        if positions.size and (
            int(rows.max()) >= self.rows or not np.array_equal(self.done[rows], positions)
        ):
            raise ValidationError(f"unit file {path} holds positions that are not to be merged")
        return rows


def _mapped(path: Path, offset: int, dim: int, first: int, stop: int) -> np.memmap:
    """Rows ``first..stop-1`` of a contiguous float32 (rows, dim) dataset at ``offset``,
    memory-mapped on their own: unmapped after each unit, so the parent's RSS holds one
    unit's pages, not the output's."""
    return np.memmap(path, dtype="<f4", mode="r+", offset=offset + first * dim * 4,
                     shape=(stop - first, dim))  # fmt: skip


def _write_unit_rows(layout: _Layout, unit, rows: np.ndarray, path: Path) -> None:
    dim = layout.dim
    for name, array in unit.vectors.items():
        offset = layout.vector_offsets.get(name)
        if offset is None:
            if layout.rows:
                raise ValidationError(f"unit file {path} has an unexpected output {name!r}")
            continue
        if array.shape[1] != dim:
            raise ValidationError(
                f"unit file {path}: {name} has width {array.shape[1]}, expected {dim}"
            )
        if not rows.size:
            continue
        first = int(rows.min())
        view = _mapped(layout.path, offset, dim, first, int(rows.max()) + 1)
        view[rows - first] = array
        view.flush()
        del view
    bounds = layout.token_bounds
    for name, offset in layout.token_offset.items():  # one per-token dataset per output
        if offset is None or not rows.size:
            continue
        if unit.per_token is None or name not in unit.per_token:
            raise ValidationError(f"unit file {path} has no per-token vectors of {name}")
        first, stop = int(bounds[rows].min()), int(bounds[rows + 1].max())
        if stop > first:
            view = _mapped(layout.path, offset, dim, first, stop)
            for row, block in zip(rows.tolist(), unit.per_token[name], strict=True):
                view[bounds[row] - first : bounds[row + 1] - first] = block
            view.flush()
            del view


def _write_vectors(
    layout: _Layout, unit_files: list[Path], progress: np.ndarray, *, remove: bool, meter
) -> tuple[list[np.ndarray], list[str]]:
    """Copy every unit's vectors to its rows and mark them in ``progress``; with ``remove``
    each unit file is removed once its rows are durable. Returns the failed positions and
    reasons recorded in the units."""
    failed_positions: list[np.ndarray] = []
    failed_reasons: list[str] = []
    kill_after = int(os.environ.get(_KILL_AFTER, "0") or 0)
    handle = open(layout.path, "rb+")  # noqa: SIM115 - kept open for fsync after every unit
    try:
        for consumed, path in enumerate(unit_files, start=1):
            unit = read_unit(path)
            rows = layout.rows_of(unit.positions, path)
            _write_unit_rows(layout, unit, rows, path)
            if unit.failed_positions.size:
                failed_positions.append(unit.failed_positions)
                failed_reasons.extend(unit.failed_reasons)
            if remove:
                os.fsync(handle.fileno())
            progress[rows] = np.where(unit.truncated, 2, 1).astype(np.uint8)
            if remove:
                progress.flush()
                meter.sample()
                size = disk_bytes(path)
                path.unlink()
                meter.removing(size)
                if kill_after and consumed >= kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            del unit
        os.fsync(handle.fileno())
    finally:
        handle.close()
    return failed_positions, failed_reasons


def validate_output(
    path: Path,
    expected_ids: Callable[[int, int], list[str]],
    expected: int,
    *,
    outputs: list[str],
    dim: int,
) -> None:
    """Count, order, duplicates, missing and unexpected ids, shapes and finiteness; raise on
    failure. Streams: ids are compared ``ID_BLOCK`` at a time against ``expected_ids(start,
    stop)``; duplicates are found by sorting 8-byte hashes (8 bytes per row, no Python object
    per row), colliding hashes compared by id."""
    with h5py.File(path, "r") as f:
        ids_ds = f["ids"]
        got = int(ids_ds.shape[0])
        hashes = np.empty(got, dtype=np.int64)
        first_bad = None
        for start in range(0, got, ID_BLOCK):
            block = ids_ds.asstr()[start : start + ID_BLOCK].tolist()
            hashes[start : start + len(block)] = [hash(i) for i in block]
            if first_bad is None and block != expected_ids(start, start + len(block)):
                first_bad = start
        if got != expected or first_bad is not None:
            raise ValidationError(_id_mismatch(path, ids_ds, hashes, expected_ids, expected))
        duplicate = _first_duplicate(hashes, ids_ds)
        if duplicate is not None:
            raise ValidationError(f"{path.name}: duplicate id {duplicate!r}")
        del hashes
        for name in outputs:
            ds = f[name]
            if ds.shape != (expected, dim):
                raise ValidationError(
                    f"{path.name}: {name} has shape {ds.shape}, expected {(expected, dim)}"
                )
            step = max(1, min(CHECK_ROWS, CHECK_BLOCK_BYTES // max(1, dim * 4)))
            for start in range(0, expected, step):
                block = ds[start : start + step]
                if not np.isfinite(block).all():
                    bad = start + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                    raise ValidationError(
                        f"{path.name}: {name} row {bad} ({ids_ds.asstr()[bad]}) is not finite"
                    )


def _first_duplicate(hashes: np.ndarray, ids_ds) -> str | None:
    """The first repeated id, if any. Sorts ``hashes`` in place (no copy); only when two
    hashes are equal are the ids re-read, block by block, and compared."""
    hashes.sort()
    equal = hashes[1:] == hashes[:-1]
    if not equal.any():
        return None
    colliding = np.unique(hashes[1:][equal])
    del equal
    seen: dict[int, set[str]] = {}
    for start in range(0, int(ids_ds.shape[0]), ID_BLOCK):
        block = ids_ds.asstr()[start : start + ID_BLOCK].tolist()
        marks = np.isin(np.array([hash(i) for i in block], np.int64), colliding)
        for k in np.flatnonzero(marks).tolist():
            group = seen.setdefault(hash(block[k]), set())
            if block[k] in group:
                return block[k]
            group.add(block[k])
    return None


def _id_mismatch(path, ids_ds, hashes, expected_ids, expected: int) -> str:
    """The message of a failed id check (counts by hash: the failure path only)."""
    want = np.empty(expected, dtype=np.int64)
    for start in range(0, expected, ID_BLOCK):
        block = expected_ids(start, min(expected, start + ID_BLOCK))
        want[start : start + len(block)] = [hash(i) for i in block]
    missing_rows = np.flatnonzero(~np.isin(want, hashes))
    first = [expected_ids(int(r), int(r) + 1)[0] for r in missing_rows[:5]]
    extra = int(np.count_nonzero(~np.isin(hashes, want)))
    dupes = int(hashes.size - np.unique(hashes).size)
    return (
        f"{path.name}: {hashes.size} ids for {expected} expected sequences; "
        f"{missing_rows.size} missing (first: {', '.join(first) or '-'}), "
        f"{extra} unexpected, {dupes} duplicated"
    )
