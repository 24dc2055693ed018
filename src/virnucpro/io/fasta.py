"""Streaming FASTA/FASTQ reader (plain, gzip, bzip2, xz) with one-line errors for bad input.

The format is detected from the first non-blank character (``>`` or ``@``), compression from
the magic bytes (``io/compression.py``). Files are read in binary blocks; each block is
checked for binary bytes and each record's sequence for invalid characters with
``bytes.translate``, never character by character in Python.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import BinaryIO, Literal

from virnucpro.errors import InputError
from virnucpro.io.compression import STREAM_ERRORS, damaged, open_binary

Format = Literal["fasta", "fastq"]

_BLOCK = 1 << 20
_BOM = b"\xef\xbb\xbf"
_WS = b" \t\r\n\x0b\x0c"
_UPPER = bytes.maketrans(string.ascii_lowercase.encode(), string.ascii_uppercase.encode())
_SEQ_OK = string.ascii_letters.encode() + b"*-."
_SEQ_LINE_OK = _SEQ_OK + _WS
_TEXT_OK = bytes(range(0x20, 0x7F)) + _WS  # printable ASCII and whitespace


@dataclass(frozen=True, slots=True)
class Record:
    """One input record."""

    id: str  # first whitespace-separated word of the header
    seq: str  # upper-cased, whitespace removed, lines joined
    header: str  # header line without the leading '>' / '@'
    line: int  # 1-based line number of the header (in the decompressed file)


RawRecord = tuple[str, str, bytes, int]  # (id, header, upper-cased ASCII sequence, line)


def read_records(path: str | Path) -> Iterator[Record]:
    """Yield the records of a FASTA or FASTQ file (plain, gzip, bzip2, xz) in file order."""
    for rec_id, header, seq, line in read_raw(path):
        yield Record(rec_id, seq.decode("ascii"), header, line)


def detect_format(path: str | Path) -> Format:
    """Return ``"fasta"`` or ``"fastq"`` from the first non-blank character of the file."""
    with _open(path) as fh:
        return _first_header(_lines(fh, str(path)), str(path))[0]


def read_raw(path: str | Path) -> Iterator[RawRecord]:
    """Like ``read_records`` but yields tuples with the sequence as bytes (faster)."""
    name = str(path)
    fh, kind = _open_kind(path)
    try:
        lines = _lines(fh, name)
        fmt, first, lineno = _first_header(lines, name)
        parse = _parse_fasta if fmt == "fasta" else _parse_fastq
        yield from parse(lines, name, first, lineno)
    except STREAM_ERRORS:
        raise damaged(name, kind) from None
    except OSError as exc:
        if kind is not None and exc.errno is None:  # bzip2: "Invalid data stream"
            raise damaged(name, kind) from None
        raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
    finally:
        fh.close()


def _open(path: str | Path) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing gzip, bzip2 or xz (by magic bytes)."""
    return _open_kind(path)[0]


def _open_kind(path: str | Path) -> tuple[BinaryIO, str | None]:
    name = str(path)
    try:
        return open_binary(path)
    except FileNotFoundError:
        raise InputError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{name}: is a folder, not a sequence file") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot open ({exc.strerror or exc})") from None


def _binary_error(name: str, byte: int, line: int) -> InputError:
    return InputError(f"{name}: looks binary (byte 0x{byte:02x} at line {line})")


def _lines(fh: BinaryIO, name: str) -> Iterator[bytes]:
    """All lines of ``fh`` without their ``\\n``, read in blocks.

    Each block is checked at once for control or non-ASCII bytes (InputError "looks binary"),
    so lines need no further check for those. A leading UTF-8 byte-order mark is dropped.
    """
    return chain.from_iterable(_line_blocks(fh, name))


def _line_blocks(fh: BinaryIO, name: str) -> Iterator[list[bytes]]:
    lineno = 1  # line number of the first line of the next block
    pending: list[bytes] = []  # start of a line that continues in the next block
    first = True
    while block := fh.read(_BLOCK):
        if first and block.startswith(_BOM):
            block = block[len(_BOM) :]
        first = False
        cut = block.rfind(b"\n")
        if cut < 0:
            pending.append(block)
            continue
        body = b"".join([*pending, block[:cut]]) if pending else block[:cut]
        pending = [block[cut + 1 :]]
        _check_block(name, body, lineno)
        lines = body.split(b"\n")
        lineno += len(lines)
        yield lines
    tail = b"".join(pending)
    if tail:
        _check_block(name, tail, lineno)
        yield [tail]


def _check_block(name: str, body: bytes, lineno: int) -> None:
    """Refuse control or non-ASCII bytes; ``body`` starts at line ``lineno``."""
    bad = body.translate(None, _TEXT_OK)
    if bad:
        i = body.index(bad[0])
        raise _binary_error(name, bad[0], lineno + body.count(b"\n", 0, i))


def _first_header(lines: Iterator[bytes], name: str) -> tuple[Format, bytes, int]:
    """Skip blank lines; return the format, the first non-blank line and its line number."""
    lineno = 0
    for raw in lines:
        lineno += 1
        stripped = raw.lstrip(_WS)
        if not stripped:
            continue
        first = stripped[0]
        if first == 0x3E:  # '>'
            return "fasta", stripped, lineno
        if first == 0x40:  # '@'
            return "fastq", stripped, lineno
        shown = stripped.rstrip(_WS)[:40].decode("ascii")
        raise InputError(
            f"{name}: not a FASTA/FASTQ file: line {lineno} starts with {shown!r} "
            "instead of '>' or '@'"
        )
    raise InputError(f"{name}: file is empty")


def _first_bad(data: bytes, allowed: bytes) -> int | None:
    """Index of the first byte of ``data`` not in ``allowed``, or None."""
    bad = data.translate(None, allowed)
    return data.index(bad[0]) if bad else None


def _header(name: str, raw: bytes, line: int) -> tuple[str, str]:
    """Return (id, header text) of a '>' or '@' line."""
    header = raw[1:].decode("ascii").strip()
    if not header:
        raise InputError(f"{name}: line {line}: header has an empty id")
    return header.split(None, 1)[0], header


def _sequence(name: str, rec_id: str, parts: list[bytes], first_line: int) -> bytes:
    """Join sequence lines (``parts[i]`` is line ``first_line + i``), upper-case and check."""
    raw = parts[0] if len(parts) == 1 else b"".join(parts)
    seq = raw.translate(_UPPER, _WS)
    if seq.translate(None, _SEQ_OK):
        _raise_bad_char(name, rec_id, parts, first_line)
    return seq


def _raise_bad_char(name: str, rec_id: str, parts: list[bytes], first_line: int) -> None:
    for offset, part in enumerate(parts):
        i = _first_bad(part, _SEQ_LINE_OK)
        if i is None:
            continue
        line = first_line + offset
        byte = part[i]
        raise InputError(
            f"{name}: record '{rec_id}' line {line}: invalid character {chr(byte)!r} "
            "in sequence (letters, '*', '-' and '.' are allowed)"
        )
    raise AssertionError("no invalid byte found")  # unreachable: caller saw one


def _parse_fasta(
    lines: Iterator[bytes], name: str, first: bytes, lineno: int
) -> Iterator[RawRecord]:
    rec_id, header = _header(name, first, lineno)
    head_line = lineno
    parts: list[bytes] = []
    for raw in lines:
        lineno += 1
        if raw[:1] == b">":
            seq = _sequence(name, rec_id, parts, head_line + 1) if parts else b""
            yield rec_id, header, seq, head_line
            rec_id, header = _header(name, raw, lineno)
            head_line = lineno
            parts = []
        else:
            parts.append(raw)
    seq = _sequence(name, rec_id, parts, head_line + 1) if parts else b""
    yield rec_id, header, seq, head_line


def _parse_fastq(
    lines: Iterator[bytes], name: str, first: bytes, lineno: int
) -> Iterator[RawRecord]:
    raw: bytes | None = first
    while raw is not None:
        rec_id, header = _header(name, raw, lineno)
        head_line = lineno
        seq_raw = next(lines, None)
        if seq_raw is None:
            raise InputError(f"{name}: record '{rec_id}' line {head_line}: missing sequence line")
        seq = _sequence(name, rec_id, [seq_raw], head_line + 1)
        plus = next(lines, b"")
        if not plus.startswith(b"+"):
            raise InputError(
                f"{name}: record '{rec_id}' line {head_line + 2}: expected the '+' line "
                "of a FASTQ record"
            )
        qual = next(lines, b"").rstrip(_WS)
        if len(qual) != len(seq):
            raise InputError(
                f"{name}: record '{rec_id}' line {head_line + 3}: quality length {len(qual)} "
                f"differs from sequence length {len(seq)}"
            )
        yield rec_id, header, seq, head_line
        lineno = head_line + 3
        raw = None
        for nxt in lines:
            lineno += 1
            stripped = nxt.lstrip(_WS)
            if not stripped:
                continue
            if stripped[:1] != b"@":
                raise InputError(
                    f"{name}: line {lineno}: expected a FASTQ header starting with '@'"
                )
            raw = stripped
            break
