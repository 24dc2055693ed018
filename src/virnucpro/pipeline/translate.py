"""Fast streaming chunking and six-frame translation of a FASTA/FASTQ file.

Same results as the reference rules in ``virnucpro.pipeline.chunking``, computed over blocks
of many chunks at once with numpy. Chunks are laid out in one byte array, each starting at a
multiple of 3 and followed by at least two pad bytes, so that codons of every phase sit in one
column of a (codons, 3) matrix and a codon that leaves its chunk is invalid (dropped, as in the
original). Reverse-strand frames are read from the same columns: reverse frame g of a chunk of
length L uses the forward codon positions of phase (L - 3 - g) mod 3, complemented and reversed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from virnucpro.errors import InputError
from virnucpro.io.atomic import atomic_path
from virnucpro.io.compression import SUFFIXES as COMPRESSED_SUFFIXES
from virnucpro.io.fasta import RawRecord, read_raw
from virnucpro.io.seqtype import NucleotideCheck
from virnucpro.pipeline.chunking import CODON_TABLE

_SEQ_SUFFIXES = (".fa", ".fasta", ".fna", ".fas", ".faa", ".fq", ".fastq")
_BLOCK_BASES = 1 << 20  # chunk bases per vectorised block; memory scales with this
_PAD = b"!"  # any byte that is not A/C/G/T
_PADS = [_PAD * p for p in range(5)]
_COMP = bytes.maketrans(b"ACGT", b"TGCA")
_INVALID = 124  # 5-radix codon index of a codon holding a non-ACGT base


def _tables() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables: byte -> base code (0..3, 4 = other); codon index -> flags, aa, rc aa.

    A codon's index is 25*c0 + 5*c1 + c2 over base codes. Flags: bit 0 stop on the forward
    strand, bit 1 stop on the reverse strand, bit 2 invalid codon. Residues are ASCII bytes,
    0 for an invalid codon.
    """
    code = np.full(256, 4, dtype=np.uint8)
    for i, base in enumerate(b"ACGT"):
        code[base] = i
    flags = np.full(125, 4, dtype=np.uint8)
    fwd = np.zeros(125, dtype=np.uint8)
    rev = np.zeros(125, dtype=np.uint8)
    for c0 in range(4):
        for c1 in range(4):
            for c2 in range(4):
                idx = 25 * c0 + 5 * c1 + c2
                aa = CODON_TABLE["ACGT"[c0] + "ACGT"[c1] + "ACGT"[c2]]
                rc_aa = CODON_TABLE["TGCA"[c2] + "TGCA"[c1] + "TGCA"[c0]]
                fwd[idx], rev[idx] = ord(aa), ord(rc_aa)
                flags[idx] = (aa == "*") | (rc_aa == "*") << 1
    return code, flags, fwd, rev


_CODE, _FLAGS, _FWD_AA, _REV_AA = _tables()


@dataclass
class TranslateResult:
    """Counts and output paths of one ``translate_file`` run."""

    chunked_fasta: Path
    nucleotide_fasta: Path
    protein_fasta: Path
    records_tsv: Path | None = None
    records: int = 0
    empty_records: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (record id, reason)
    chunks: int = 0
    chunks_without_frame: int = 0
    frames_kept: int = 0
    bases: int = 0
    non_acgtn: int = 0
    non_acgtn_chars: Counter[str] = field(default_factory=Counter)


def output_stem(path: Path) -> str:
    """File name without ``.gz``/``.bz2``/``.xz`` and one FASTA/FASTQ suffix (``reads.fq.gz``
    -> ``reads``)."""
    name = path.name
    for packed in COMPRESSED_SUFFIXES:
        if name.lower().endswith(packed):
            name = name[: -len(packed)]
            break
    for suffix in _SEQ_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def output_paths(input: Path, out_dir: Path, chunk_size: int) -> tuple[Path, Path, Path]:
    """The chunked FASTA, identified nucleotide FASTA and protein FASTA of ``input``."""
    stem = output_stem(Path(input))
    return (
        out_dir / f"{stem}_chunked{chunk_size}.fa",
        out_dir / f"{stem}_identified_nucleotide.fa",
        out_dir / f"{stem}_identified_protein.faa",
    )


def translate_file(
    input: Path,
    out_dir: Path,
    chunk_size: int,
    *,
    records_tsv: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> TranslateResult:
    """Chunk every record of ``input`` and write its chunks and kept frames to ``out_dir``.

    Outputs (one line per sequence, each written atomically; nothing is left on error):
    ``{stem}_chunked{C}.fa``, ``{stem}_identified_nucleotide.fa``,
    ``{stem}_identified_protein.faa`` and, if given, ``records_tsv`` with one row per record
    (``id, length, chunks, frames_kept``). Zero-length records are skipped and listed.
    ``progress`` is called with the number of records finished since its previous call.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk size must be positive, got {chunk_size}")
    input, out_dir = Path(input), Path(out_dir)
    paths = output_paths(input, out_dir, chunk_size)
    result = TranslateResult(*paths, records_tsv=Path(records_tsv) if records_tsv else None)
    finals = [*paths, *([result.records_tsv] if result.records_tsv else [])]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with ExitStack() as stack:
            temps = [stack.enter_context(atomic_path(p)) for p in finals]
            outs = [stack.enter_context(open(t, "wb", buffering=1 << 20)) for t in temps]
            tsv = outs[3] if len(outs) > 3 else None
            if tsv is not None:
                tsv.write(b"id\tlength\tchunks\tframes_kept\n")
            writer = _Writer(chunk_size, *outs[:3], tsv, result, progress)
            writer.check = NucleotideCheck(input)
            writer.run(read_raw(input))
    except OSError as exc:
        where = exc.filename or out_dir
        raise InputError(f"{where}: cannot write outputs ({exc.strerror or exc})") from None
    return result


class _Writer:
    """Streams records into blocks of chunks, translates each block and writes its lines."""

    def __init__(
        self,
        chunk_size: int,
        chunked: BinaryIO,
        nucleotide: BinaryIO,
        protein: BinaryIO,
        tsv: BinaryIO | None,
        result: TranslateResult,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.c = chunk_size
        self.outs = (chunked, nucleotide, protein)
        self.tsv = tsv
        self.result = result
        self.progress = progress
        self.other: Counter[int] = Counter()  # bytes other than A/C/G/T/N in all records
        self.ids: list[bytes] = []
        self.seqs: list[bytes] = []
        self.owners: list[list] = []  # per queued chunk, its record: [id, length, chunks, frames]
        self.done: list[list] = []  # records whose chunks are all queued, in input order
        self.bases = 0
        self.check = NucleotideCheck("")  # input type (io/seqtype.py)

    def run(self, records: Iterable[RawRecord]) -> None:
        """Consume ``read_raw`` records (sequences as upper-case bytes); flush the last block."""
        c = self.c
        for rec_id, _header, seq, line in records:
            n = len(seq)
            entry = [rec_id, n, 0, 0]
            other = seq.translate(None, b"ACGTN")
            self.check.add(rec_id, f"line {line}", seq, other)
            if other:
                self.other.update(other)
            if n == 0:
                self.result.skipped.append((rec_id, "empty sequence"))
            prefix = rec_id.encode() + b"_chunk_"
            bounds = [(0, n)] if 0 < n <= c else fast_bounds(n, c)
            entry[2] = len(bounds)
            for i, (start, end) in enumerate(bounds, 1):
                self.ids.append(prefix + str(i).encode())
                self.seqs.append(seq if end - start == n else seq[start:end])
                self.owners.append(entry)
                self.bases += end - start
                if self.bases >= _BLOCK_BASES:
                    self._flush()
            self.done.append(entry)
        self.check.finish()
        self._flush()
        self._finish()

    def _flush(self) -> None:
        """Translate the queued chunks, write them, and write rows of finished records."""
        res = self.result
        chunked, nucleotide, protein = self.outs
        if self.seqs:
            nt_lines: list[bytes] = []
            aa_lines: list[bytes] = []
            kept = _translate_block(self.ids, self.seqs, nt_lines, aa_lines)
            chunked.write(b"".join(_fasta_lines(self.ids, self.seqs)))
            nucleotide.write(b"".join(nt_lines))
            protein.write(b"".join(aa_lines))
            for owner, k in zip(self.owners, kept, strict=True):
                owner[3] += k
            res.chunks += len(kept)
            res.frames_kept += sum(kept)
            res.chunks_without_frame += kept.count(0)
        self.ids, self.seqs, self.owners, self.bases = [], [], [], 0
        if self.done:
            if self.tsv is not None:
                rows = (f"{i}\t{n}\t{k}\t{f}\n" for i, n, k, f in self.done)
                self.tsv.write("".join(rows).encode())
            res.records += len(self.done)
            res.empty_records += sum(1 for e in self.done if e[1] == 0)
            res.bases += sum(e[1] for e in self.done)
            if self.progress is not None:
                self.progress(len(self.done))
            self.done = []

    def _finish(self) -> None:
        """Record the non-ACGTN counts, per character."""
        res = self.result
        res.non_acgtn_chars.update({chr(b): n for b, n in sorted(self.other.items())})
        res.non_acgtn = sum(res.non_acgtn_chars.values())


def fast_bounds(n: int, c: int) -> list[tuple[int, int]]:
    """``chunk_bounds`` in closed form: sum(steps[:i]) = i*lo + min(i, m) for i < k."""
    if n <= 0:
        return []
    k = -(-n // c)
    r = k * c - n
    lo = r // k
    m = r - lo * (k - 1)
    starts = (i * c - i * lo - min(i, m) for i in range(k))
    return [(s, min(s + c, n)) for s in starts]


def _fasta_lines(ids: list[bytes], seqs: list[bytes]) -> Iterator[bytes]:
    for name, seq in zip(ids, seqs, strict=True):
        yield b">%s\n%s\n" % (name, seq)


def _translate_block(
    ids: list[bytes], seqs: list[bytes], nt_lines: list[bytes], aa_lines: list[bytes]
) -> list[int]:
    """Append the kept frames of every chunk to the two line lists; return kept counts."""
    lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
    spans = lengths + 2 + (-(lengths + 2)) % 3  # multiple of 3, >= 2 pad bytes
    row0 = np.zeros(len(seqs), dtype=np.int64)  # first codon row of each chunk
    np.cumsum(spans[:-1] // 3, out=row0[1:])
    pieces: list[bytes] = []
    for seq, pad in zip(seqs, (spans - lengths).tolist(), strict=True):
        pieces += (seq, _PADS[pad])
    blob = np.frombuffer(b"".join(pieces) + _PAD * 5, dtype=np.uint8)

    codes = _CODE[blob]
    idx = codes[:-2] * np.uint8(25)
    idx += codes[1:-1] * np.uint8(5)
    idx += codes[2:]
    idx = idx.reshape(-1, 3)  # row q, column phase p: codon at byte 3q + p
    flags = _FLAGS[idx]
    fwd_aa = [np.ascontiguousarray(col).tobytes() for col in _FWD_AA[idx].T]
    rev_aa = [np.ascontiguousarray(col).tobytes() for col in _REV_AA[idx].T]

    n_codons = np.maximum((lengths[:, None] - np.arange(3)) // 3, 0)  # per chunk and phase
    merged = np.empty((len(seqs), 3), dtype=np.uint8)  # OR of flags over each frame's codons
    bounds = np.empty(2 * len(seqs), dtype=np.int64)
    bounds[0::2] = row0
    for phase in range(3):
        bounds[1::2] = row0 + n_codons[:, phase]
        merged[:, phase] = np.bitwise_or.reduceat(flags[:, phase], bounds)[0::2]
    open_f = (n_codons > 0) & (merged & 1 == 0)
    rev_phase = (lengths[:, None] - 3 - np.arange(3)) % 3  # phase read by R1, R2, R3
    rows = np.arange(len(seqs))[:, None]
    open_r = (n_codons > 0) & (merged & 2 == 0)
    open_r = open_r[rows, rev_phase]
    mask = (open_f * np.array([1, 2, 4])).sum(1) + (open_r * np.array([8, 16, 32])).sum(1)

    kept: list[int] = []
    invalid = (merged & 4).tolist()
    starts, sizes, rphase = row0.tolist(), n_codons.tolist(), rev_phase.tolist()
    for j, bits in enumerate(mask.tolist()):
        if not bits:
            kept.append(0)
            continue
        seq, name, first, k = seqs[j], ids[j], starts[j], 0
        rc = b""
        for frame in range(6):
            if not bits >> frame & 1:
                continue
            if frame < 3:
                phase = frame
                aa = fwd_aa[phase][first : first + sizes[j][phase]]
                strand, offset, label = seq, phase, b"F%d" % (frame + 1)
            else:
                offset = frame - 3
                phase = rphase[j][offset]
                aa = rev_aa[phase][first : first + sizes[j][phase]][::-1]
                rc = rc or seq.translate(_COMP)[::-1]
                strand, label = rc, b"R%d" % (offset + 1)
            if invalid[j][phase]:
                aa = aa.replace(b"\0", b"")
                if not aa:
                    continue
            nt = strand[offset : offset + 3 * len(aa) + 1]
            nt_lines.append(b">%s%s\n%s\n" % (name, label, nt))
            aa_lines.append(b">%s%s\n%s\n" % (name, label, aa))
            k += 1
        kept.append(k)
    return kept


def chunk_spans(n: int, c: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` chunks of a record of length ``n``, as ``chunking.chunk_bounds``."""
    return [(0, n)] if 0 < n <= c else fast_bounds(n, c)


def translate_chunks(
    ids: list[bytes], seqs: list[bytes]
) -> tuple[list[int], list[bytes], list[bytes]]:
    """Kept frames of many upper-case chunks at once (SPEC 1.2), vectorised.

    Returns the number of frames kept per chunk, and the nucleotide and protein FASTA entries
    (``b">{id}{F|R}{n}\\n{sequence}\\n"``, one per kept frame, chunk order then frame order).
    """
    nt_lines: list[bytes] = []
    aa_lines: list[bytes] = []
    kept = _translate_block(ids, seqs, nt_lines, aa_lines)
    return kept, nt_lines, aa_lines
