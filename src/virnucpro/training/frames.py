"""Training frames of one input file (SPEC 1.5), streamed into its group's spool.

GenBank records follow the original training rule: upper-case, chunk (SPEC 1.1), drop a chunk
holding any of ``N R Y M K S W H B V D``, keep a frame (SPEC 1.2: stop-free, non-empty) only
if its protein is a substring of a CDS ``/translation`` of the same record. FASTA/FASTQ
records have no annotation: every stop-free frame of a chunk without ambiguous bases is kept.
Chunks are translated in vectorised blocks by ``pipeline.translate``; every record and chunk
that gives no frame is written to ``skipped.tsv`` with its reason.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path
from typing import BinaryIO

import numpy as np

from virnucpro.errors import InputError, ValidationError
from virnucpro.io.fasta import read_raw
from virnucpro.pipeline.translate import chunk_spans, translate_chunks
from virnucpro.training.cds_index import CdsIndex
from virnucpro.training.genbank import read_genbank
from virnucpro.training.inputs import Format, TrainingInput

AMBIGUOUS = b"NRYMKSWHBVD"
_NOT_AMBIGUOUS = bytes(b for b in range(256) if b not in AMBIGUOUS)
_PROTEIN_ONLY = b"EFIJLOPQZ"  # letters of proteins that no nucleotide code uses
_BLOCK_BASES = 1 << 20

NO_SEQUENCE = "no sequence in the GenBank record (for example a CONTIG or WGS master record)"
EMPTY = "empty sequence"
NO_CDS = "no CDS /translation in the GenBank record"
NO_FRAME_RECORD = "no chunk gave a frame (reasons on its chunk lines)"
NO_STOP_FREE = "no stop-free frame"
NOT_IN_CDS = "no stop-free frame is part of a CDS /translation of the record"

RULE_GENBANK = (
    "SPEC 1.5 (original training rule): chunks with N R Y M K S W H B V D dropped; stop-free, "
    "non-empty frames kept only if a substring of a CDS /translation of the same record"
)
RULE_FASTA = (
    "no annotation: chunks with N R Y M K S W H B V D dropped; every stop-free, non-empty "
    "frame kept"
)


@dataclass
class FileCounts:
    """What one input file gave: every record and chunk is counted once."""

    format: str
    records: int = 0
    records_with_frames: int = 0
    records_skipped: Counter[str] = field(default_factory=Counter)
    chunks: int = 0
    chunks_with_frames: int = 0
    chunks_skipped: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    bases: int = 0
    cds_translations: int = 0


class Records:
    """Every input record: its id and input, in input order; an id may appear only once."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.input_of: array = array("i")
        self._where: dict[str, int] = {}

    def add(self, rec_id: str, input_index: int, inputs: list[TrainingInput]) -> int:
        if rec_id in self._where:
            first = inputs[self.input_of[self._where[rec_id]]].path
            here = inputs[input_index].path
            raise InputError(
                f"{here}: record '{rec_id}' appears twice (also in {first}); record ids must "
                "be unique over all inputs (frame ids are built from them)"
            )
        self._where[rec_id] = len(self.ids)
        self.ids.append(rec_id)
        self.input_of.append(input_index)
        return len(self.ids) - 1


class Spool:
    """The candidate frames of one group: nucleotide and protein FASTA entries, and per frame
    the index of its record (in ``Records``)."""

    def __init__(self, folder: Path, number: int) -> None:
        self.nucleotide_path = folder / f".spool_{number}.fa"
        self.protein_path = folder / f".spool_{number}.faa"
        self.nucleotide: BinaryIO = open(self.nucleotide_path, "wb", buffering=1 << 20)
        self.protein: BinaryIO = open(self.protein_path, "wb", buffering=1 << 20)
        self.record_of: array = array("q")

    def close(self) -> None:
        self.nucleotide.close()
        self.protein.close()

    def remove(self) -> None:
        self.close()
        self.nucleotide_path.unlink(missing_ok=True)
        self.protein_path.unlink(missing_ok=True)


@dataclass
class _Pending:
    """A record whose chunks are queued: its index, id, CDS index and frames kept so far."""

    index: int
    id: str
    cds: CdsIndex | None
    frames: int = 0


def _records(path: Path, fmt: Format) -> Iterator[tuple[str, bytes | None, list[bytes] | None]]:
    """(id, upper-case sequence or None, CDS translations or None for FASTA) per record."""
    if fmt == "genbank":
        for rec in read_genbank(path):
            yield rec.id, rec.seq, rec.translations
        return
    for rec_id, _header, seq, line in read_raw(path):
        other = seq.translate(None, b"ACGTN")
        if other and len(other.translate(None, _PROTEIN_ONLY)) < len(other):
            letter = chr(next(b for b in other if b in _PROTEIN_ONLY))
            raise InputError(
                f"{path}: record '{rec_id}' (line {line}) looks like a protein sequence "
                f"(letter {letter!r}); make-dataset needs nucleotide GenBank, FASTA or FASTQ"
            )
        yield rec_id, seq, None


def _record_reason(seq: bytes | None, translations: list[bytes] | None) -> str | None:
    """Why a whole record gives no chunk, or None."""
    if seq is None:
        return NO_SEQUENCE
    if not seq:
        return EMPTY
    if translations is not None and not translations:
        return NO_CDS
    return None


class FrameCollector:
    """Collects the candidate frames of input files into spools; writes skipped.tsv lines."""

    def __init__(self, chunk_size: int, records: Records, skipped: BinaryIO) -> None:
        self.c = chunk_size
        self.records = records
        self.skipped = skipped

    def collect(
        self, inputs: list[TrainingInput], number: int, fmt: Format, spool: Spool
    ) -> FileCounts:
        """Stream input ``number`` into ``spool``; return its counts (checked to add up)."""
        item = inputs[number]
        self.source = str(item.source)
        self.counts = counts = FileCounts(fmt)
        self.spool = spool
        frames_before = len(spool.record_of)
        self._reset()
        for rec_id, seq, translations in _records(item.path, fmt):
            index = self.records.add(rec_id, number, inputs)
            counts.records += 1
            if translations is not None:
                counts.cds_translations += len(translations)
            reason = _record_reason(seq, translations)
            if reason is not None or seq is None:
                reason = reason or NO_SEQUENCE
                self._skip(rec_id, "record", rec_id, reason)
                counts.records_skipped[reason] += 1
                continue
            counts.bases += len(seq)
            cds = CdsIndex(translations) if translations is not None else None
            self._queue(_Pending(index, rec_id, cds), seq)
        self._flush()
        if fmt == "genbank" and counts.records and not counts.cds_translations:
            raise InputError(
                f"{item.path}: no CDS /translation in any of its {counts.records} GenBank "
                "record(s); the training rule keeps only frames found in a CDS translation. "
                "Give these sequences as FASTA instead (then every stop-free frame is kept)"
            )
        self._check(item.path, len(spool.record_of) - frames_before)
        return counts

    def _reset(self) -> None:
        self.ids: list[bytes] = []
        self.seqs: list[bytes] = []
        self.owners: list[_Pending] = []
        self.done: list[_Pending] = []
        self.bases = 0

    def _skip(self, item_id: str, level: str, record: str, reason: str) -> None:
        self.skipped.write(f"{item_id}\t{level}\t{record}\t{self.source}\t{reason}\n".encode())

    def _queue(self, entry: _Pending, seq: bytes) -> None:
        """Queue the chunks of one record (ambiguous ones are skipped); flush full blocks."""
        prefix = entry.id.encode() + b"_chunk_"
        spans = chunk_spans(len(seq), self.c)
        self.counts.chunks += len(spans)
        ambiguous = bool(seq.translate(None, _NOT_AMBIGUOUS))
        step = max(1, _BLOCK_BASES // self.c)
        for lo in range(0, len(spans), step):
            part = spans[lo : lo + step]
            if len(spans) == 1:
                chunks = [seq]
            else:
                chunks = [seq[a:b] for a, b in part]
            numbers = range(lo + 1, lo + 1 + len(part))
            if ambiguous:
                chunks, numbers = self._drop_ambiguous(entry, chunks, numbers)
            self.ids += [b"%s%d" % (prefix, i) for i in numbers]
            self.seqs += chunks
            self.owners += [entry] * len(chunks)
            self.bases += sum(map(len, chunks))
            if self.bases >= _BLOCK_BASES:
                self._flush()
        self.done.append(entry)

    def _drop_ambiguous(
        self, entry: _Pending, chunks: list[bytes], numbers: range
    ) -> tuple[list[bytes], list[int]]:
        """The chunks without N R Y M K S W H B V D (and their numbers); list the others."""
        kept, kept_numbers = [], []
        for chunk, i in zip(chunks, numbers, strict=True):
            letters = chunk.translate(None, _NOT_AMBIGUOUS)
            if letters:
                shown = " ".join(sorted(set(letters.decode())))
                self._skip(f"{entry.id}_chunk_{i}", "chunk", entry.id, f"ambiguous base(s) {shown}")
                self.counts.chunks_skipped["ambiguous base(s)"] += 1
            else:
                kept.append(chunk)
                kept_numbers.append(i)
        return kept, kept_numbers

    def _flush(self) -> None:
        """Translate the queued chunks, keep the frames of the rule, finish complete records."""
        if self.seqs:
            kept, nt_lines, aa_lines = translate_chunks(self.ids, self.seqs)
            keep = self._select(kept, aa_lines)
            if keep is None:
                final = kept
            else:
                nt_lines = list(compress(nt_lines, keep))
                aa_lines = list(compress(aa_lines, keep))
                ends = np.cumsum(kept)
                kept_so_far = np.concatenate([[0], np.cumsum(keep)])
                final = (kept_so_far[ends] - kept_so_far[ends - kept]).tolist()
            spool, counts = self.spool, self.counts
            spool.nucleotide.write(b"".join(nt_lines))
            spool.protein.write(b"".join(aa_lines))
            owners = np.fromiter((o.index for o in self.owners), np.int64, len(self.owners))
            spool.record_of.frombytes(np.repeat(owners, final).tobytes())
            for chunk_id, owner, k, f in zip(self.ids, self.owners, kept, final, strict=True):
                if f:
                    owner.frames += f
                else:
                    reason = NOT_IN_CDS if k else NO_STOP_FREE
                    self._skip(chunk_id.decode(), "chunk", owner.id, reason)
                    counts.chunks_skipped[reason] += 1
            with_frames = sum(1 for f in final if f)
            counts.chunks_with_frames += with_frames
            counts.frames += len(nt_lines)
        for entry in self.done:
            if entry.frames:
                self.counts.records_with_frames += 1
            else:
                self._skip(entry.id, "record", entry.id, NO_FRAME_RECORD)
                self.counts.records_skipped[NO_FRAME_RECORD] += 1
        self.ids, self.seqs, self.owners, self.bases = [], [], [], 0
        self.done = []

    def _select(self, kept: list[int], aa_lines: list[bytes]) -> list[bool] | None:
        """Per kept frame: False when its record has CDS translations and none holds it;
        None when no chunk of the block belongs to such a record (FASTA input)."""
        if all(o.cds is None for o in self.owners):
            return None
        keep = [True] * len(aa_lines)
        pos, j = 0, 0
        while j < len(kept):  # runs of chunks of one record
            owner, start = self.owners[j], pos
            while j < len(kept) and self.owners[j] is owner:
                pos += kept[j]
                j += 1
            if owner.cds is not None and pos > start:
                proteins = [line[line.index(b"\n") + 1 : -1] for line in aa_lines[start:pos]]
                keep[start:pos] = owner.cds.contains(proteins)
        return keep

    def _check(self, path: Path, spooled: int) -> None:
        c = self.counts
        if (
            c.records != c.records_with_frames + sum(c.records_skipped.values())
            or c.chunks != c.chunks_with_frames + sum(c.chunks_skipped.values())
            or c.frames != spooled
        ):
            raise ValidationError(f"{path}: records, chunks or frames do not add up: {c}")
