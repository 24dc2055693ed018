"""Full and read-only disks: recognise them and turn them into one clear line.

A full disk (ENOSPC, EDQUOT) or a read-only file system (EROFS) is not a bug and not a
reason to retry: every step that meets one raises ``DiskError`` naming the path (and, for a
full disk, the space needed when known). Committed work stays where it is, so the same
command resumes once space is freed.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from virnucpro.errors import VirnucproError

DISK_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EROFS: "read-only file system"}
if hasattr(errno, "EDQUOT"):
    DISK_ERRNOS[errno.EDQUOT] = "disk quota exceeded"
_H5_ERRNO = re.compile(r"errno = (\d+)")
_H5_NAME = re.compile(r"name = '([^']+)'")


class DiskError(VirnucproError):
    """A write failed because the disk is full or read-only (one line; never retried)."""


def disk_errno(exc: BaseException) -> int | None:
    """The ENOSPC / EDQUOT / EROFS behind ``exc`` (or its causes), else None.

    HDF5 reports the C errno only inside its message (``errno = 28``), so that is read too.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, OSError):
            if current.errno in DISK_ERRNOS:
                return current.errno
            for match in _H5_ERRNO.finditer(str(current)):
                if int(match.group(1)) in DISK_ERRNOS:
                    return int(match.group(1))
        current = current.__cause__ or current.__context__
        seen += 1
    return None


def is_disk_error(exc: BaseException) -> bool:
    return isinstance(exc, DiskError) or disk_errno(exc) is not None


def _mb(size: int) -> str:
    if size < 10**6:
        return f"{size / 1e3:.0f} kB"
    return f"{size / 1e6:.1f} MB" if size < 10**9 else f"{size / 1e9:.2f} GB"


def _free(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_error(exc: BaseException, path: str | Path | None = None, *, needed: int | None = None):
    """The DiskError for ``exc`` (itself when it already is one), naming ``path``."""
    if isinstance(exc, DiskError):
        return exc
    code = disk_errno(exc) or errno.ENOSPC
    where = getattr(exc, "filename", None) or path
    if where is None:
        match = _H5_NAME.search(str(exc))
        where = match.group(1) if match else None
    where_path = Path(os.fspath(where)) if where is not None else None
    message = f"{DISK_ERRNOS[code]}: cannot write {where_path or 'the output'}"
    if code != errno.EROFS:
        free = _free(where_path) if where_path is not None else None
        detail = []
        if needed:
            detail.append(f"needs about {_mb(needed)}")
        if free is not None:
            detail.append(f"{_mb(free)} free")
        if detail:
            message += f" ({', '.join(detail)})"
        message += "; committed work is kept: free some space and run the same command again"
    else:
        message += "; committed work is kept: make it writable and run the same command again"
    return DiskError(message)


def check_free_space(folder: Path, needed: int, target: Path | None = None) -> None:
    """DiskError (naming ``target``, else ``folder``) before a write of about ``needed`` bytes
    that cannot fit on ``folder``'s disk."""
    try:
        usage = shutil.disk_usage(folder)
    except OSError:
        return
    if usage.total > 0 and usage.free < needed:  # some network/FUSE file systems report 0s
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise disk_error(full, target or folder, needed=needed)


@contextmanager
def disk_errors(where: Path) -> Iterator[None]:
    """Turn an OSError of a full or read-only disk into DiskError (naming ``where`` when the
    error names no file)."""
    try:
        yield
    except OSError as exc:
        if is_disk_error(exc):
            raise disk_error(exc, where) from None
        raise


def reserve(path: Path) -> None:
    """Allocate every block of file ``path`` now, so that writing through a memory map of it
    cannot die with SIGBUS on a full disk (DiskError instead, with the space needed)."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDWR)
    try:
        before = os.fstat(fd).st_blocks * 512
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return  # the file system cannot reserve space; nothing better to do
            if exc.errno in DISK_ERRNOS:
                raise disk_error(exc, path, needed=max(0, size - before)) from None
            raise
    finally:
        os.close(fd)


class QuietFileHandler(logging.FileHandler):
    """A log file handler that stays silent when its disk is full (no traceback on stderr)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass
