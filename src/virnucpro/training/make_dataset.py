"""``make-dataset``: balanced, split training frames in a DATA_DIR (docs/TRAINING.md).

Pass 1 streams every input through ``FrameCollector`` into one spool per group; pass 2 draws
the balanced sample (``balance``), splits it by record and streams the chosen frames into the
final files. Everything is written in a temporary folder renamed onto DATA_DIR at the end, so
an error leaves no DATA_DIR behind (and an earlier one untouched).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from itertools import compress, islice
from pathlib import Path
from typing import BinaryIO

import numpy as np

from virnucpro._version import __version__
from virnucpro.errors import InputError, ValidationError
from virnucpro.io.atomic import atomic_dir
from virnucpro.pipeline.chunking import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from virnucpro.training import balance
from virnucpro.training.frames import (
    RULE_FASTA,
    RULE_GENBANK,
    FileCounts,
    FrameCollector,
    Records,
    Spool,
)
from virnucpro.training.inputs import (
    LABELS,
    TrainingInput,
    check_inputs,
    file_sha256,
    sniff_format,
)

log = logging.getLogger("virnucpro.make_dataset")

NUCLEOTIDES = "frames_nucleotide.fa"
PROTEINS = "frames_protein.faa"
TABLE = "dataset.tsv"
DESCRIPTION = "dataset.json"
SKIPPED = "skipped.tsv"
TABLE_COLUMNS = ("id", "label", "group", "source", "record", "split")
SKIPPED_COLUMNS = ("id", "level", "record", "source", "reason")
SPLITS = ("train", "validation")
FORMAT, FORMAT_VERSION = "virnucpro.dataset", 1
_BATCH = 1 << 16  # frames per copy step of pass 2
NOT_SAMPLED = "not sampled: balancing kept none of its {} frame(s)"


@dataclass(frozen=True)
class DatasetOptions:
    chunk_size: int = 500
    seed: int = 42
    validation_fraction: float = 0.1
    max_per_class: int | None = None


@dataclass
class _Group:
    """The frames one (label, group) contributes: its spool, then its sample."""

    label: str
    name: str
    spool: Spool
    mask: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def check_options(options: DatasetOptions) -> None:
    if not MIN_CHUNK_SIZE <= options.chunk_size <= MAX_CHUNK_SIZE:
        raise InputError(
            f"--chunk-size must be from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}, "
            f"got {options.chunk_size}"
        )
    if not 0 < options.validation_fraction < 1:
        raise InputError(
            f"--validation-fraction must be above 0 and below 1, got {options.validation_fraction}"
        )
    if options.max_per_class is not None and options.max_per_class < 1:
        raise InputError(f"--max-per-class must be at least 1, got {options.max_per_class}")


def check_output_dir(out_dir: Path) -> None:
    """Refuse to replace anything but an earlier DATA_DIR (or an empty folder)."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if not out_dir.is_dir():
        raise InputError(f"{out_dir}: exists and is not a folder")
    if (out_dir / DESCRIPTION).is_file() or not any(out_dir.iterdir()):
        return
    raise InputError(
        f"{out_dir}: exists and is not a make-dataset DATA_DIR (no {DESCRIPTION}); "
        "choose a new folder"
    )


def make_dataset(inputs: list[TrainingInput], out_dir: Path, options: DatasetOptions) -> dict:
    """Write DATA_DIR from ``inputs``; return the contents of its dataset.json."""
    out_dir = Path(out_dir)
    check_options(options)
    check_inputs(inputs)
    check_output_dir(out_dir)
    formats = [sniff_format(item.path) for item in inputs]
    try:
        with atomic_dir(out_dir) as tmp:
            return _build(inputs, formats, tmp, options)
    except OSError as exc:
        where = exc.filename or out_dir
        raise InputError(f"{where}: cannot write the dataset ({exc.strerror or exc})") from None


def _build(inputs: list[TrainingInput], formats: list, tmp: Path, options: DatasetOptions) -> dict:
    records = Records()
    groups: dict[tuple[str, str], _Group] = {}
    counts: list[FileCounts] = []
    with open(tmp / SKIPPED, "wb", buffering=1 << 20) as skipped:
        skipped.write(("\t".join(SKIPPED_COLUMNS) + "\n").encode())
        collector = FrameCollector(options.chunk_size, records, skipped)
        try:
            for number, (item, fmt) in enumerate(zip(inputs, formats, strict=True)):
                key = (item.label, item.group)
                if key not in groups:
                    groups[key] = _Group(item.label, item.group, Spool(tmp, len(groups)))
                counts.append(collector.collect(inputs, number, fmt, groups[key].spool))
                log.info("%s: %s", item.path, counts[-1])
        finally:
            for group in groups.values():
                group.spool.close()
        per_class = _sample(groups, counts, inputs, options)
        validation = _split(groups, records, options)
        written = _write(groups, records, inputs, validation, tmp, skipped)
    for group in groups.values():
        group.spool.remove()
    description = _describe(inputs, formats, counts, groups, records, validation, options)
    description["frames_per_class"] = per_class
    _check_accounting(description, written, records)
    description["files"], description["fingerprint"] = _checksums(tmp)
    # Plain write: the whole folder is fsynced and renamed into place by atomic_dir.
    (tmp / DESCRIPTION).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return description


def _checksums(root: Path) -> tuple[dict, str]:
    """Size and SHA-256 of every output file, and the dataset fingerprint: SHA-256 over
    dataset.tsv and both frame files, each preceded by its name and a newline (one read)."""
    files = {}
    fingerprint = hashlib.sha256()
    for name in (TABLE, NUCLEOTIDES, PROTEINS, SKIPPED):
        digest = hashlib.sha256()
        counted = name != SKIPPED
        if counted:
            fingerprint.update(f"{name}\n".encode())
        with open(root / name, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
                if counted:
                    fingerprint.update(block)
        files[name] = {"size": (root / name).stat().st_size, "sha256": digest.hexdigest()}
    return files, fingerprint.hexdigest()


def _sample(
    groups: dict[tuple[str, str], _Group],
    counts: list[FileCounts],
    inputs: list[TrainingInput],
    options: DatasetOptions,
) -> int:
    """Choose N frames per class over its groups; return N."""
    totals = {
        label: sum(len(g.spool.record_of) for g in groups.values() if g.label == label)
        for label in LABELS
    }
    for label in LABELS:
        if totals[label] == 0:
            files = [i for i, item in enumerate(inputs) if item.label == label]
            reasons: Counter[str] = Counter()
            for i in files:
                reasons.update(counts[i].records_skipped)
            shown = ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "none"
            raise InputError(
                f"the {label} class is empty: its {len(files)} file(s) gave no training frame "
                f"(records without a frame: {shown})"
            )
    per_class = min(totals.values())
    if options.max_per_class is not None:
        per_class = min(per_class, options.max_per_class)
    for code, label in enumerate(LABELS):
        members = [(n, g) for n, g in enumerate(groups.values()) if g.label == label]
        shares = balance.quotas([len(g.spool.record_of) for _, g in members], per_class)
        for (number, group), take in zip(members, shares, strict=True):
            group.mask = balance.sample(
                len(group.spool.record_of), take, options.seed, code, number
            )
    return per_class


def _split(
    groups: dict[tuple[str, str], _Group], records: Records, options: DatasetOptions
) -> np.ndarray:
    """Per record: True when it is on the validation side."""
    validation = np.zeros(len(records.ids), dtype=bool)
    for code, label in enumerate(LABELS):
        chosen = [
            np.frombuffer(g.spool.record_of, dtype=np.int64)[g.mask]
            for g in groups.values()
            if g.label == label
        ]
        selected = np.bincount(np.concatenate(chosen), minlength=len(records.ids))
        per_record = {int(r): int(selected[r]) for r in np.flatnonzero(selected)}
        side = balance.split_records(
            per_record, options.validation_fraction, options.seed, code, label
        )
        validation[list(side)] = True
    return validation


def _write(
    groups: dict[tuple[str, str], _Group],
    records: Records,
    inputs: list[TrainingInput],
    validation: np.ndarray,
    tmp: Path,
    skipped: BinaryIO,
) -> int:
    """Stream the chosen frames into the final files (viral groups first); list the records
    whose frames were all left out by balancing. Return the number of frames written."""
    written = 0
    candidates = np.zeros(len(records.ids), dtype=np.int64)
    chosen = np.zeros(len(records.ids), dtype=np.int64)
    with (
        open(tmp / NUCLEOTIDES, "wb", buffering=1 << 20) as nt_out,
        open(tmp / PROTEINS, "wb", buffering=1 << 20) as aa_out,
        open(tmp / TABLE, "wb", buffering=1 << 20) as table,
    ):
        table.write(("\t".join(TABLE_COLUMNS) + "\n").encode())
        for group in sorted(groups.values(), key=lambda g: LABELS.index(g.label)):
            record_of = np.frombuffer(group.spool.record_of, dtype=np.int64)
            candidates += np.bincount(record_of, minlength=len(records.ids))
            chosen += np.bincount(record_of[group.mask], minlength=len(records.ids))
            written += _write_group(
                group, record_of, records, inputs, validation, nt_out, aa_out, table
            )
    for rec in np.flatnonzero((candidates > 0) & (chosen == 0)).tolist():
        source = inputs[records.input_of[rec]].source
        reason = NOT_SAMPLED.format(int(candidates[rec]))
        skipped.write(
            f"{records.ids[rec]}\trecord\t{records.ids[rec]}\t{source}\t{reason}\n".encode()
        )
    return written


def _write_group(
    group: _Group,
    record_of: np.ndarray,
    records: Records,
    inputs: list[TrainingInput],
    validation: np.ndarray,
    nt_out: BinaryIO,
    aa_out: BinaryIO,
    table: BinaryIO,
) -> int:
    """Copy the chosen frames of one group's spool, a batch of frames at a time."""
    prefix = f"\t{group.label}\t{group.name}\t".encode()
    tails: dict[int, bytes] = {}  # record -> b"source\trecord\tsplit\n"
    written = 0
    with (
        open(group.spool.nucleotide_path, "rb") as nt_in,
        open(group.spool.protein_path, "rb") as aa_in,
    ):
        for start in range(0, len(record_of), _BATCH):
            stop = min(start + _BATCH, len(record_of))
            nt = list(islice(nt_in, 2 * (stop - start)))
            aa = list(islice(aa_in, 2 * (stop - start)))
            if len(nt) != 2 * (stop - start) or nt[0::2] != aa[0::2]:
                raise ValidationError(f"spool of group {group.name}: frames out of step")
            mask = group.mask[start:stop]
            recs = record_of[start:stop][mask].tolist()
            if not recs:
                continue
            if len(recs) < len(mask):
                both = np.repeat(mask, 2)
                nt, aa = list(compress(nt, both)), list(compress(aa, both))
            nt_out.write(b"".join(nt))
            aa_out.write(b"".join(aa))
            for rec in set(recs) - tails.keys():
                split = "validation" if validation[rec] else "train"
                source = inputs[records.input_of[rec]].source
                tails[rec] = f"{source}\t{records.ids[rec]}\t{split}\n".encode()
            rows = [h[1:-1] + prefix + tails[r] for h, r in zip(nt[0::2], recs, strict=True)]
            table.write(b"".join(rows))
            written += len(rows)
        if nt_in.read(1) or aa_in.read(1):
            raise ValidationError(f"spool of group {group.name}: more frames than counted")
    return written


def _describe(
    inputs: list[TrainingInput],
    formats: list,
    counts: list[FileCounts],
    groups: dict[tuple[str, str], _Group],
    records: Records,
    validation: np.ndarray,
    options: DatasetOptions,
) -> dict:
    """The contents of dataset.json (files and fingerprint are added once written)."""
    n_records = len(records.ids)
    input_of = np.frombuffer(records.input_of, dtype=np.int32)
    candidates = np.zeros(n_records, dtype=np.int64)
    chosen = np.zeros(n_records, dtype=np.int64)
    per_input = np.zeros(len(inputs), dtype=np.int64)
    by_label = {label: {"train": 0, "validation": 0, "total": 0} for label in LABELS}
    by_group = []
    for group in groups.values():
        record_of = np.frombuffer(group.spool.record_of, dtype=np.int64)
        picked = record_of[group.mask]
        candidates += np.bincount(record_of, minlength=n_records)
        chosen += np.bincount(picked, minlength=n_records)
        per_input += np.bincount(input_of[picked], minlength=len(inputs))
        held = int(validation[picked].sum())
        row = {"train": len(picked) - held, "validation": held, "total": len(picked)}
        for key, value in row.items():
            by_label[group.label][key] += value
        by_group.append(
            {
                "label": group.label,
                "group": group.name,
                "candidate_frames": len(record_of),
                **row,
                "records": len(np.unique(picked)),
            }
        )
    by_split = {split: {label: by_label[label][split] for label in LABELS} for split in SPLITS}
    for split in SPLITS:
        by_split[split]["total"] = sum(by_label[label][split] for label in LABELS)
    skipped_records = sum(sum(c.records_skipped.values()) for c in counts)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "virnucpro_version": __version__,
        "chunk_size": options.chunk_size,
        "seed": options.seed,
        "validation_fraction": options.validation_fraction,
        "max_per_class": options.max_per_class,
        "balance": "N = min(viral frames, other frames, max_per_class) per class; each group "
        "gives N x its share of the class's frames (largest remainder), drawn uniformly "
        "(seeded)",
        "split": "by record: all frames of a record are on one side",
        "counts": {
            "frames": int(chosen.sum()),
            "by_label": by_label,
            "by_split": by_split,
            "by_group": by_group,
            "candidate_frames": {
                label: sum(len(g.spool.record_of) for g in groups.values() if g.label == label)
                for label in LABELS
            },
            "records": n_records,
            "records_in_dataset": int((chosen > 0).sum()),
            "records_not_sampled": int(((candidates > 0) & (chosen == 0)).sum()),
            "records_skipped": skipped_records,
        },
        "inputs": [
            _describe_input(item, fmt, c, int(per_input[i]))
            for i, (item, fmt, c) in enumerate(zip(inputs, formats, counts, strict=True))
        ],
    }


def _describe_input(item: TrainingInput, fmt: str, c: FileCounts, selected: int) -> dict:
    out = {
        "source": item.source,
        "path": str(item.path.resolve()),
        "label": item.label,
        "group": item.group,
        "format": fmt,
        "rule": RULE_GENBANK if fmt == "genbank" else RULE_FASTA,
        "size": item.path.stat().st_size,
        "sha256": file_sha256(item.path),
        "records": c.records,
        "records_with_frames": c.records_with_frames,
        "records_skipped": dict(c.records_skipped),
        "bases": c.bases,
        "chunks": c.chunks,
        "chunks_with_frames": c.chunks_with_frames,
        "chunks_skipped": dict(c.chunks_skipped),
        "candidate_frames": c.frames,
        "frames": selected,
    }
    if fmt == "genbank":
        out["cds_translations"] = c.cds_translations
    return out


def _check_accounting(description: dict, written: int, records: Records) -> None:
    """Count in == count out: every record and frame is in the dataset or accounted for."""
    c = description["counts"]
    problems = []
    if c["records"] != c["records_in_dataset"] + c["records_not_sampled"] + c["records_skipped"]:
        problems.append("records")
    if written != c["frames"] or c["frames"] != 2 * description["frames_per_class"]:
        problems.append("frames")
    if sum(i["records"] for i in description["inputs"]) != len(records.ids):
        problems.append("records per input")
    if problems:
        raise ValidationError(f"make-dataset counts do not add up ({', '.join(problems)}): {c}")
