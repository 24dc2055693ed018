"""Compressed inputs: gzip, bzip2 and xz are read through the standard library.

The compression is told by the file's first bytes, never by its name. Other compressions
and archives (zstd, zip, 7z, lz4, ...) are named in a one-line error that says how to read
them, instead of "looks binary".
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from pathlib import Path
from typing import BinaryIO

from virnucpro.errors import InputError

READABLE = ("gzip", "bzip2", "xz")
SUFFIXES = (".gz", ".bz2", ".xz")  # stripped from output names like ".gz" always was

_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"PK\x03\x04", "zip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"\x1f\x9d", "compress (.Z)"),
    (b"LZIP", "lzip"),
    (b"\x89LZO", "lzop"),
    (b"Rar!", "rar"),
)

# What a damaged compressed stream raises while it is read (bzip2 raises a bare OSError).
STREAM_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, lzma.LZMAError)


def sniff(head: bytes) -> str | None:
    """The compression named by the first bytes of a file, or None for plain data."""
    if head[:3] == b"BZh" and head[3:4].isdigit():
        return "bzip2"
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    return None


def compression_of(path: str | Path) -> str | None:
    """The compression of the file at ``path`` (OSError when it cannot be read)."""
    with open(path, "rb") as probe:
        return sniff(probe.read(8))


def open_binary(path: str | Path, buffering: int = 1 << 20) -> tuple[BinaryIO, str | None]:
    """Open ``path`` for binary reading, decompressing gzip, bzip2 or xz.

    Returns the stream and the compression (None for a plain file). An unsupported
    compression is an InputError naming it; OSError from opening propagates.
    """
    kind = compression_of(path)
    if kind == "gzip":
        return gzip.open(path, "rb"), kind  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.open(path, "rb"), kind  # type: ignore[return-value]
    if kind == "xz":
        return lzma.open(path, "rb"), kind  # type: ignore[return-value]
    if kind is not None:
        raise InputError(
            f"{path}: {kind}-compressed, which virnucpro does not read; decompress it first "
            f"(virnucpro reads plain, gzip, bzip2 and xz files)"
        )
    return open(path, "rb", buffering=buffering), None


def damaged(path: str | Path, kind: str | None) -> InputError:
    """The one-line error for a compressed stream that is truncated or corrupt."""
    return InputError(f"{path}: {kind or 'compressed'} stream is truncated or corrupt")
