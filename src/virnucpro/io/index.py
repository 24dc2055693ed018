"""The sequence index: every input record, in input order, readable by position without parsing.

``build_or_load`` makes one pass over the inputs and writes a flat store under
``<cache_dir>/sequence_index/`` (atomically); later runs on unchanged inputs reuse it.
Workers call ``SequenceIndex.open(cache_dir)``, which only memory-maps the store.

Store layout (position ``p`` = ``0..n-1`` over records with a non-empty sequence):

- ``sequences.bin``: all sequences (upper-case ASCII) concatenated; ``seq_offsets.npy``
  (int64, n+1) gives sequence ``p`` as ``[seq_offsets[p], seq_offsets[p+1])``.
- ``ids.bin``: ids, each followed by ``\\n``; ``id_offsets.npy`` (int64, n+1) likewise.
- ``lengths.npy`` (int64), ``file_index.npy`` (int32), ``lines.npy`` (int64),
  ``order.npy`` (int64: positions by length, longest first, ties in input order).
- ``meta.json``: version, file fingerprints (path, size, mtime and the sha256 of each input
  file), skipped records, digests (written last), and ``store_sha256``: the sha256 of every
  other file of the store, checked before the cache is reused (a damaged cache is rebuilt).

An input whose size and mtime are unchanged is taken as unchanged; one whose mtime (or path)
changed but whose size did not is hashed and the cache reused when its content is the same.
The job fingerprint depends on the content only, never on timestamps or paths.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import mmap
import os
import re
import shutil
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, overload

import numpy as np

from virnucpro.errors import InputError
from virnucpro.io.atomic import atomic_dir, atomic_write_text
from virnucpro.io.digests import FileHasher, damaged_store_files, sha256_file, store_digests
from virnucpro.io.fasta import read_raw
from virnucpro.io.pids import pid_alive

INDEX_VERSION = 2  # 2: content digests of the inputs and of the store files
INDEX_DIRNAME = "sequence_index"
_ARRAYS = ("seq_offsets", "id_offsets", "lengths", "file_index", "lines", "order")
_BUFFER = 1 << 22
_STORE_FILES = ("sequences.bin", "ids.bin", *(f"{name}.npy" for name in _ARRAYS))

log = logging.getLogger("virnucpro.index")


@dataclass(frozen=True)
class FileFingerprint:
    """An input file as it was when the index was built."""

    path: str  # absolute
    size: int
    mtime_ns: int
    sha256: str = field(default="", compare=False)  # of the file's bytes, when the index read it

    @classmethod
    def of(cls, path: str | Path) -> FileFingerprint:
        """Stat ``path`` (InputError when it cannot be read)."""
        absolute = os.path.abspath(path)
        try:
            st = os.stat(absolute)
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except OSError as exc:
            raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if not os.path.isfile(absolute):
            from virnucpro.io.paths import input_file_problem

            raise InputError(input_file_problem(path) or f"{path}: is not a regular file")
        return cls(absolute, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class SkippedRecord:
    """A record that has nothing to embed."""

    id: str
    file: str  # absolute path
    line: int
    reason: str  # e.g. "empty sequence"


class StringTable(Sequence[str]):
    """Read-only list of strings stored as newline-terminated ASCII with start offsets."""

    def __init__(self, data: bytes | mmap.mmap, offsets: np.ndarray) -> None:
        self._data = data
        self._offsets = memoryview(np.ascontiguousarray(offsets, dtype=np.int64))  # fast ints

    def __len__(self) -> int:
        return len(self._offsets) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        j = int(i) + n if int(i) < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"position {i} out of range for {n} ids")
        return self._data[self._offsets[j] : self._offsets[j + 1] - 1].decode("ascii")

    def __iter__(self) -> Iterator[str]:
        text = self._data[: self._offsets[-1]].decode("ascii")
        return iter(text.split("\n")[:-1])

    def span(self, start: int, stop: int) -> list[str]:
        """``self[start:stop]`` decoded in one piece (fast for blocks of a merge)."""
        stop = min(stop, len(self))
        if start >= stop:
            return []
        return (
            self._data[self._offsets[start] : self._offsets[stop]].decode("ascii").split("\n")[:-1]
        )


class SequenceIndex:
    """All embeddable records of a run, in input order, backed by a memory-mapped store."""

    def __init__(self, root: Path, reused: bool) -> None:
        self.root = root
        self.reused = reused
        try:
            self._meta: dict[str, Any] = json.loads((root / "meta.json").read_text())
            if self._meta.get("version") != INDEX_VERSION:
                raise ValueError(f"index version {self._meta.get('version')}")
            arrays = {name: np.load(root / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
            self._seq_data = _map(root / "sequences.bin")
            id_data = _map(root / "ids.bin")
            self.files = [FileFingerprint(**f) for f in self._meta["files"]]
            self.skipped = [SkippedRecord(**s) for s in self._meta["skipped"]]
            self.total_residues = int(self._meta["total_residues"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{root}: sequence index is missing or damaged ({exc})") from None
        n = int(self._meta.get("n", -1))
        seq_offsets, id_offsets = arrays["seq_offsets"], arrays["id_offsets"]
        if (
            any(len(arrays[a]) != n for a in ("lengths", "file_index", "lines", "order"))
            or len(seq_offsets) != n + 1
            or len(id_offsets) != n + 1
            or int(seq_offsets[-1]) != len(self._seq_data)
            or int(id_offsets[-1]) != len(id_data)
        ):
            raise InputError(f"{root}: sequence index is damaged (sizes do not agree)")
        self._seq_offsets = memoryview(seq_offsets)  # indexing gives Python ints, fast
        self._order = arrays["order"]
        self.ids: StringTable = StringTable(id_data, id_offsets)
        self.lengths: np.ndarray = arrays["lengths"]
        self.file_index: np.ndarray = arrays["file_index"]
        self.lines: np.ndarray = arrays["lines"]
        self._names = _display_names([f.path for f in self.files])

    @classmethod
    def open(cls, cache_dir: str | Path) -> SequenceIndex:
        """Open the index that ``build_or_load`` wrote under ``cache_dir`` (memory-mapped)."""
        return cls(Path(cache_dir) / INDEX_DIRNAME, reused=True)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (str(self.root), self.reused))

    def __len__(self) -> int:
        return len(self.lengths)

    @property
    def order(self) -> np.ndarray:
        """Positions sorted by length, longest first; equal lengths keep input order."""
        return self._order

    def sequence(self, p: int) -> str:
        """The sequence at position ``p`` (upper-case)."""
        p = int(p)
        if not 0 <= p < len(self):
            raise IndexError(f"position {p} out of range for {len(self)} sequences")
        return self._seq_data[self._seq_offsets[p] : self._seq_offsets[p + 1]].decode("ascii")

    def sequences(self, positions: Sequence[int] | np.ndarray) -> list[str]:
        """The sequences at ``positions``, in that order (read from the store only)."""
        if isinstance(positions, np.ndarray):
            positions = positions.tolist()
        return [self.sequence(p) for p in positions]

    def stride(self, rank: int, world_size: int) -> np.ndarray:
        """Every ``world_size``-th position of ``order``, starting at ``rank``."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        return np.asarray(self.order[rank::world_size])

    def fingerprint(self) -> str:
        """sha256 over the inputs' content: each file's bytes and the records read from them
        (never paths or timestamps: a touched or moved but unchanged input is the same job)."""
        return str(self._meta["fingerprint"])

    def location(self, p: int) -> str:
        """``file:line`` of the header of the record at position ``p``."""
        return f"{self._names[int(self.file_index[p])]}:{int(self.lines[p])}"

    def describe(self) -> dict[str, Any]:
        """Summary for run reports."""
        return {
            "records": len(self),
            "skipped": len(self.skipped),
            "total_residues": self.total_residues,
            "fingerprint": self.fingerprint(),
            "reused": self.reused,
            "files": [asdict(f) for f in self.files],
        }

    def close(self) -> None:
        """Release the memory maps (the object is unusable afterwards)."""
        for data in (self._seq_data, self.ids._data):
            if isinstance(data, mmap.mmap):
                data.close()


def build_or_load(files: Sequence[str | Path], cache_dir: str | Path) -> SequenceIndex:
    """Reuse the index in ``cache_dir`` if it was built from these exact files, else rebuild."""
    if not files:
        raise InputError("no input files given")
    current = [FileFingerprint.of(f) for f in files]
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _lock(cache_dir):
        found = _load_matching(cache_dir, current)
        if found is not None:
            return found
        _clean_stale(cache_dir)
        with atomic_dir(cache_dir / INDEX_DIRNAME) as tmp:
            _build(files, current, tmp)
    return SequenceIndex(cache_dir / INDEX_DIRNAME, reused=False)


def _reopen(root: str, reused: bool) -> SequenceIndex:
    return SequenceIndex(Path(root), reused)


def _map(path: Path) -> bytes | mmap.mmap:
    """Memory-map a file read-only (an empty file maps to ``b""``)."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return b""
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


def _display_names(paths: Sequence[str]) -> list[str]:
    """File names for messages: base names when they are unique, else full paths."""
    names = [os.path.basename(p) for p in paths]
    return names if len(set(names)) == len(names) else list(paths)


@contextmanager
def _lock(cache_dir: Path) -> Iterator[None]:
    """Serialise builders of the same cache folder."""
    with open(cache_dir / f".{INDEX_DIRNAME}.lock", "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _load_matching(cache_dir: Path, current: list[FileFingerprint]) -> SequenceIndex | None:
    """The cached index if it exists, is intact and was built from ``current``; else None."""
    root = cache_dir / INDEX_DIRNAME
    if not (root / "meta.json").is_file():
        return None
    try:
        index = SequenceIndex(root, reused=True)
    except InputError as exc:
        log.warning("%s; rebuilding it", exc)
        return None
    damaged = damaged_store_files(root, index._meta.get("store_sha256") or {})
    if damaged or not index._meta.get("store_sha256"):
        index.close()
        log.warning(
            "index cache %s is damaged (%s changed since it was built); rebuilding it",
            root,
            ", ".join(damaged) or "no digests",
        )
        return None
    matched = _match_inputs(index.files, current)
    if matched is None:
        index.close()
        return None
    if matched != [(f.path, f.size, f.mtime_ns) for f in index.files]:
        meta = dict(index._meta)
        meta["files"] = [
            asdict(replace(f, path=p, size=size, mtime_ns=mtime))
            for f, (p, size, mtime) in zip(index.files, matched, strict=True)
        ]
        index.close()
        atomic_write_text(root / "meta.json", json.dumps(meta, indent=2) + "\n")
        index = SequenceIndex(root, reused=True)
    return index


def _match_inputs(
    recorded: list[FileFingerprint], current: list[FileFingerprint]
) -> list[tuple[str, int, int]] | None:
    """(path, size, mtime) of each current input when every one has the recorded content,
    else None. Only an input whose size is the same but whose mtime or path differs is read
    (its sha256 compared with the recorded one)."""
    if len(recorded) != len(current):
        return None
    matched = []
    for old, new in zip(recorded, current, strict=True):
        if old.size != new.size:
            return None
        if (old.path, old.mtime_ns) != (new.path, new.mtime_ns):
            try:
                if not old.sha256 or sha256_file(new.path) != old.sha256:
                    return None
            except OSError:
                return None
        matched.append((new.path, new.size, new.mtime_ns))
    return matched


_STALE = re.compile(rf"^\.{INDEX_DIRNAME}\.(tmp|old)-(\d+)$")


def _clean_stale(cache_dir: Path) -> None:
    """Remove temporary folders left by builders that no longer run."""
    for entry in cache_dir.iterdir():
        match = _STALE.match(entry.name)
        if match and (int(match.group(2)) == os.getpid() or not pid_alive(int(match.group(2)))):
            shutil.rmtree(entry, ignore_errors=True)


def _build(files: Sequence[str | Path], current: list[FileFingerprint], out: Path) -> None:
    """One pass over ``files`` writing the store into folder ``out``."""
    seq_offsets, id_offsets = array("q", [0]), array("q", [0])
    lines, file_index = array("q"), array("i")
    hashes, refs = array("q"), array("q")  # over ALL records: hash(id); position or ~skipped
    skipped: list[SkippedRecord] = []
    skipped_files: list[int] = []
    seq_end = id_end = 0
    with (
        open(out / "sequences.bin", "wb", buffering=_BUFFER) as seq_fh,
        open(out / "ids.bin", "wb", buffering=_BUFFER) as id_fh,
    ):
        # bound methods: this loop runs once per input record
        seq_write, id_write = seq_fh.write, id_fh.write
        seq_off_add, id_off_add = seq_offsets.append, id_offsets.append
        line_add, file_add, hash_add, ref_add = (
            lines.append,
            file_index.append,
            hashes.append,
            refs.append,
        )
        digests: list[str] = []
        for fi, (path, fp) in enumerate(zip(files, current, strict=True)):
            hasher = FileHasher(fp.path)  # reads the file alongside the parser
            for rec_id, _header, seq, line in read_raw(path):
                hash_add(hash(rec_id))
                if not seq:
                    ref_add(~len(skipped))
                    skipped.append(SkippedRecord(rec_id, fp.path, line, "empty sequence"))
                    skipped_files.append(fi)
                    continue
                ref_add(len(file_index))
                id_bytes = (rec_id + "\n").encode("ascii")
                seq_write(seq)
                id_write(id_bytes)
                seq_end += len(seq)
                id_end += len(id_bytes)
                seq_off_add(seq_end)
                id_off_add(id_end)
                line_add(line)
                file_add(fi)
            try:
                digests.append(hasher.result())
            except OSError as exc:
                raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    n = len(file_index)
    if n == 0:
        raise InputError(
            f"no sequences to process in {_describe_inputs(files)}; "
            f"{len(skipped)} record(s) with empty sequence"
        )
    arrays = {
        "seq_offsets": np.frombuffer(seq_offsets, dtype=np.int64),
        "id_offsets": np.frombuffer(id_offsets, dtype=np.int64),
        "file_index": np.frombuffer(file_index, dtype=np.int32),
        "lines": np.frombuffer(lines, dtype=np.int64),
    }
    arrays["lengths"] = np.diff(arrays["seq_offsets"])
    names = _display_names([f.path for f in current])

    def where(k: int) -> str:
        r = refs[k]
        if r < 0:
            return f"{names[skipped_files[~r]]}:{skipped[~r].line}"
        return f"{names[file_index[r]]}:{lines[r]}"

    ids = StringTable((out / "ids.bin").read_bytes(), arrays["id_offsets"])
    _check_duplicates(
        hashes, lambda k: ids[refs[k]] if refs[k] >= 0 else skipped[~refs[k]].id, where
    )
    arrays["order"] = np.argsort(-arrays["lengths"], kind="stable").astype(np.int64)
    for name, values in arrays.items():
        np.save(out / f"{name}.npy", values)
    files_meta = [asdict(replace(f, sha256=d)) for f, d in zip(current, digests, strict=True)]
    digest = _content_digest(out, arrays["seq_offsets"], skipped)
    meta = {
        "version": INDEX_VERSION,
        "n": n,
        "total_residues": seq_end,
        "files": files_meta,
        "skipped": [asdict(s) for s in skipped],
        "content_sha256": digest,
        "fingerprint": hashlib.sha256(
            json.dumps({"files": digests, "content": digest}, sort_keys=True).encode()
        ).hexdigest(),
        "store_sha256": store_digests(out, list(_STORE_FILES)),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


def _content_digest(out: Path, seq_offsets: np.ndarray, skipped: list[SkippedRecord]) -> str:
    """sha256 of what was read: ids, sequences with their boundaries, skipped ids."""
    content = hashlib.sha256()
    for name in ("ids.bin", "sequences.bin"):
        with open(out / name, "rb") as fh:
            while block := fh.read(_BUFFER):
                content.update(block)
        content.update(b"\x00")
    content.update(seq_offsets.astype("<i8").tobytes())
    content.update("\n".join(s.id for s in skipped).encode("ascii"))
    return content.hexdigest()


def _describe_inputs(files: Sequence[str | Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{len(files)} files ({files[0]}, ...)"


def _check_duplicates(
    hashes: array, id_of: Callable[[int], str], where: Callable[[int], str]
) -> None:
    """Raise InputError naming both locations of the first repeated id (in input order).

    ``hashes[k]`` is ``hash(id)`` of record ``k`` (all records, input order): only records
    whose hashes collide are compared by id, so memory stays at 8 bytes per record.
    """
    h = np.frombuffer(hashes, dtype=np.int64)
    by_hash = np.argsort(h, kind="stable")
    sorted_h = h[by_hash]
    same = np.flatnonzero(sorted_h[1:] == sorted_h[:-1])
    if len(same) == 0:
        return
    seen: dict[str, int] = {}
    candidates = np.unique(by_hash[np.concatenate([same, same + 1])])  # sorted: input order
    for k in candidates.tolist():
        rec_id = id_of(k)
        if rec_id in seen:
            raise InputError(
                f"duplicate id '{rec_id}' at {where(k)} (first seen at {where(seen[rec_id])})"
            )
        seen[rec_id] = k
