"""Atomic writes: a reader sees either the old file (or folder) or the complete new one.

Everything is written under a hidden temporary name in the same folder, flushed to disk, and
then renamed onto the final name; the folder itself is fsynced so the rename survives a crash.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (new, renamed or removed names) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush one file's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(final: Path, kind: str = "tmp") -> Path:
    """The hidden sibling ``.<name>.<kind>-<pid>`` used while ``final`` is being written."""
    return final.with_name(f".{final.name}.{kind}-{os.getpid()}")


@contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``final`` atomically.

    On an exception the temporary file is removed and ``final`` is left untouched.
    """
    final = Path(final)
    tmp = temp_name(final)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON with a trailing newline to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder; on success it takes the place of folder ``final``.

    The caller fills the folder; every file in it is fsynced before the rename. An existing
    ``final`` is moved aside first and removed after (a crash in between leaves no ``final``,
    never a half-written one). On an exception the temporary folder is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(final)
    _remove_tree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for child in tmp.iterdir():
            if child.is_file():
                fsync_file(child)
        fsync_dir(tmp)
        old = temp_name(final, "old")
        if final.exists() or final.is_symlink():
            _remove_tree(old)
            os.replace(final, old)
            os.replace(tmp, final)
            fsync_dir(final.parent)
            _remove_tree(old)
        else:
            os.replace(tmp, final)
    except BaseException:
        _remove_tree(tmp)
        raise
    fsync_dir(final.parent)
