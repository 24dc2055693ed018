"""Reference rules of VirNucPro's chunking and six-frame translation (SPEC 1.1 and 1.2).

Plain, per-record Python that mirrors the original step by step, quirks included. The fast
file-level path (``virnucpro.pipeline.translate``) is tested against these functions.
"""

from __future__ import annotations

import argparse

_BASES = "TCAG"
_AMINO = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"

CODON_TABLE: dict[str, str] = {
    a + b + c: _AMINO[16 * i + 4 * j + k]
    for i, a in enumerate(_BASES)
    for j, b in enumerate(_BASES)
    for k, c in enumerate(_BASES)
}
"""The standard genetic code over upper-case A/C/G/T codons; stops are ``*``."""

_COMPLEMENT = str.maketrans("ACGT", "TGCA")

MIN_CHUNK_SIZE, MAX_CHUNK_SIZE = 50, 2000
"""Chunk sizes the command line accepts (translate, make-dataset)."""


def chunk_size_arg(text: str) -> int:
    """``argparse`` type of ``--chunk-size``: an integer from 50 to 2000."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not MIN_CHUNK_SIZE <= value <= MAX_CHUNK_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be an integer from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE}, got {text!r}"
        )
    return value


def chunk_bounds(n: int, c: int) -> list[tuple[int, int]]:
    """Return the ``[start, end)`` slices that cut a record of length ``n`` into chunks of ``c``.

    k = ceil(n / c) chunks spread the overlap r = k*c - n as in the original, including its
    quirk: when more than k-1 steps get lo+1, the last chunk comes out short (n=600, c=500 gives
    [0:500] and [299:600]). A zero-length record has no chunk.
    """
    if c < 1:
        raise ValueError(f"chunk size must be positive, got {c}")
    if n <= 0:
        return []
    k = -(-n // c)
    r = k * c - n
    lo = r // k
    m = r - lo * (k - 1)
    steps = [lo + 1] * m + [lo] * (k - 1 - m) + [0]
    bounds = []
    for i in range(k):
        start = i * c - sum(steps[:i])
        bounds.append((start, min(start + c, n)))
    return bounds


def chunk_record(record_id: str, seq: str, c: int) -> list[tuple[str, str]]:
    """Return ``(chunk_id, chunk)`` pairs; ids are ``{record_id}_chunk_{i}`` from 1."""
    return [
        (f"{record_id}_chunk_{i + 1}", seq[start:end])
        for i, (start, end) in enumerate(chunk_bounds(len(seq), c))
    ]


def reverse_complement(seq: str) -> str:
    """Reverse complement mapping A<->T and C<->G only; any other character is kept."""
    return seq.translate(_COMPLEMENT)[::-1]


def translate(strand: str, offset: int) -> str:
    """Translate codons ``strand[i:i+3]`` for i in range(offset, len-2, 3).

    A codon that is not made of A/C/G/T produces no residue (dropped silently).
    """
    residues = (CODON_TABLE.get(strand[i : i + 3], "") for i in range(offset, len(strand) - 2, 3))
    return "".join(residues)


def six_frames(chunk_id: str, chunk: str) -> list[tuple[str, str, str]]:
    """Return the kept frames of a chunk as ``(frame_id, protein, nucleotide)``.

    Frames F1..F3 read the upper-cased chunk from offsets 0..2, R1..R3 its reverse complement.
    A frame is kept when its protein is non-empty and has no stop. Its nucleotide is
    ``strand[offset : offset + 3*P + 1]`` (P = protein length; the original's +1 is kept).
    """
    forward = chunk.upper()
    kept = []
    for name, strand in (("F", forward), ("R", reverse_complement(forward))):
        for offset in range(3):
            protein = translate(strand, offset)
            if protein and "*" not in protein:
                nucleotide = strand[offset : offset + 3 * len(protein) + 1]
                kept.append((f"{chunk_id}{name}{offset + 1}", protein, nucleotide))
    return kept
