"""make-dataset inputs: which files, which label and group, which format, which fingerprint."""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from virnucpro.errors import InputError
from virnucpro.io.compression import STREAM_ERRORS, open_binary
from virnucpro.io.paths import require_input_files

Label = Literal["viral", "other"]
LABELS: tuple[Label, ...] = ("viral", "other")
Format = Literal["genbank", "fasta", "fastq"]
MANIFEST_COLUMNS = ("path", "label", "group")
_SNIFF_BYTES = 1 << 16


@dataclass(frozen=True)
class TrainingInput:
    """One input file of make-dataset: its path, class label and group."""

    path: Path
    label: Label
    group: str

    @property
    def source(self) -> str:
        return str(self.path)


def from_flags(viral: list[Path], other: list[Path]) -> list[TrainingInput]:
    """Inputs of ``--viral`` and ``--other``: each file is its own group (named by its path)."""
    inputs = [TrainingInput(Path(p), "viral", str(p)) for p in viral]
    inputs += [TrainingInput(Path(p), "other", str(p)) for p in other]
    return inputs


def read_manifest(manifest: Path) -> list[TrainingInput]:
    """Inputs of a ``--manifest`` TSV with columns ``path``, ``label`` (viral|other), ``group``.

    Relative paths are relative to the manifest's folder. Blank lines are ignored.
    """
    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
    except FileNotFoundError:
        raise InputError(f"{manifest}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{manifest}: cannot read the manifest ({exc})") from None
    rows = [(n, row) for n, row in enumerate(rows, start=1) if any(c.strip() for c in row)]
    if not rows:
        raise InputError(f"{manifest}: empty manifest (need a header path, label, group)")
    header = [c.strip() for c in rows[0][1]]
    missing = [c for c in MANIFEST_COLUMNS if c not in header]
    if missing:
        raise InputError(
            f"{manifest} line {rows[0][0]}: header lacks column(s) {', '.join(missing)} "
            f"(need tab-separated {', '.join(MANIFEST_COLUMNS)})"
        )
    col = {name: header.index(name) for name in MANIFEST_COLUMNS}
    inputs = []
    for line, row in rows[1:]:
        if len(row) < len(header):
            raise InputError(
                f"{manifest} line {line}: {len(row)} columns, the header has {len(header)}"
            )
        path, label, group = (row[col[c]].strip() for c in MANIFEST_COLUMNS)
        if label not in LABELS:
            raise InputError(f"{manifest} line {line}: label {label!r} is not viral or other")
        if not path or not group:
            raise InputError(f"{manifest} line {line}: empty path or group")
        full = Path(path) if Path(path).is_absolute() else manifest.parent / path
        inputs.append(TrainingInput(full, label, group))  # type: ignore[arg-type]
    if not inputs:
        raise InputError(f"{manifest}: no input rows under the header")
    return inputs


def check_inputs(inputs: list[TrainingInput]) -> None:
    """Every label has an input, every file exists and is listed once (one-line errors)."""
    for label in LABELS:
        if not any(i.label == label for i in inputs):
            raise InputError(f"no {label} input: make-dataset needs files of both classes")
    seen: dict[Path, TrainingInput] = {}
    for item in inputs:
        require_input_files([item.path])
        key = item.path.resolve()
        if key in seen:
            raise InputError(f"{item.path}: given twice (as {seen[key].label} and {item.label})")
        seen[key] = item


def _open_text_head(path: Path) -> bytes:
    try:
        f, _kind = open_binary(path)
        with f:
            return f.read(_SNIFF_BYTES)
    except (OSError, *STREAM_ERRORS) as exc:
        raise InputError(f"{path}: cannot read ({getattr(exc, 'strerror', None) or exc})") from None


def sniff_format(path: Path) -> Format:
    """GenBank (first line ``LOCUS``), FASTA (``>``) or FASTQ (``@``), plain or compressed."""
    head = _open_text_head(path)
    for lineno, line in enumerate(head.splitlines(), start=1):
        text = line.strip()
        if not text:
            continue
        if text.startswith(b"LOCUS"):
            return "genbank"
        if text[:1] == b">":
            return "fasta"
        if text[:1] == b"@":
            return "fastq"
        shown = text[:40].decode("ascii", "replace")
        raise InputError(
            f"{path}: not a GenBank, FASTA or FASTQ file: line {lineno} starts with {shown!r}"
        )
    raise InputError(f"{path}: file is empty")


def file_sha256(path: Path) -> str:
    """SHA-256 of the file's bytes as stored (compressed files are hashed compressed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
