"""GenBank records (plain, gzip, bzip2, xz) through Biopython: id, sequence and CDS translations."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from Bio import BiopythonParserWarning, SeqIO
from Bio.Seq import UndefinedSequenceError

from virnucpro.errors import InputError
from virnucpro.io.compression import STREAM_ERRORS, damaged, open_binary


@dataclass(frozen=True)
class GenBankRecord:
    """One GenBank record: ``seq`` is upper-case ASCII, None when the record has none."""

    id: str  # accession.version, as the record id of the matching .fna
    seq: bytes | None
    translations: list[bytes]  # every CDS /translation, upper case


def read_genbank(path: Path) -> Iterator[GenBankRecord]:
    """Yield the records of a GenBank file in order; one-line InputError on malformed input."""
    try:
        raw, kind = open_binary(path)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    number, last = 0, "none"
    try:
        with (
            io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as handle,
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore", BiopythonParserWarning)
            for record in SeqIO.parse(handle, "genbank"):
                number += 1
                last = record.id
                yield _convert(path, number, record)
    except InputError:
        raise
    except STREAM_ERRORS:
        raise damaged(path, kind) from None
    except OSError as exc:
        if kind is not None and exc.errno is None:  # bzip2: "Invalid data stream"
            raise damaged(path, kind) from None
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, AssertionError, KeyError, IndexError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"{path}: GenBank record {number + 1} (after {last!r}) is malformed: {message}"
        ) from None


def _convert(path: Path, number: int, record) -> GenBankRecord:
    rec_id = record.id if record.id and record.id != "<unknown id>" else record.name
    if record.annotations.get("molecule_type", "").lower() == "protein":
        raise InputError(
            f"{path}: record {number} ({rec_id!r}) is a protein GenBank (GenPept) record; "
            "make-dataset needs nucleotide GenBank, FASTA or FASTQ"
        )
    try:
        seq: bytes | None = bytes(record.seq).upper() if len(record.seq) else b""
    except UndefinedSequenceError:
        seq = None
    translations = [
        t.strip().upper().encode("ascii", "replace")
        for feature in record.features
        if feature.type == "CDS"
        for t in feature.qualifiers.get("translation", ())
        if t.strip()
    ]
    return GenBankRecord(rec_id, seq, translations)
