"""Is this nucleotide or protein sequence? Checks for the commands that need one or the other.

An input is *not nucleotide* when more than 10% of its letters are outside the IUPAC
nucleotide codes (``ACGTU RYSWKMBDHVN``); the error names the first record that is itself
over 10%. ``translate``, ``predict`` and ``make-dataset`` refuse such input; so does
``embed`` with DNABERT-S. The decision is taken over the whole input (a stray short record
with an ``X`` is not a protein file), as soon as 10,000 letters have been read and again at
the end. ``embed`` with ESM-2 warns when the input looks like DNA (at least 90% of its
letters are A, C, G, T or N). Sequences arrive upper-cased (``io/fasta.py``).
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from virnucpro.errors import InputError

IUPAC_NUCLEOTIDES = b"ACGTURYSWKMBDHVN"
MAX_FOREIGN = 0.10  # more than this fraction of non-IUPAC letters: not nucleotide
DNA_LIKE = 0.90  # at least this fraction of ACGTN letters: looks like DNA
DECIDE_AFTER = 10_000  # letters read before a streaming check may refuse

_LETTERS = string.ascii_uppercase.encode()
_FOREIGN = bytes(b for b in _LETTERS if b not in IUPAC_NUCLEOTIDES)

# byte classes for the vectorised scan of an index store
_IS_LETTER = np.zeros(256, np.bool_)
_IS_LETTER[list(_LETTERS)] = True
_IS_FOREIGN = np.zeros(256, np.bool_)
_IS_FOREIGN[list(_FOREIGN)] = True
_SCAN_BYTES = 1 << 24


def counts(seq: bytes, other: bytes | None = None) -> tuple[int, int]:
    """(letters, letters outside the IUPAC nucleotide codes) of upper-case ``seq``.

    ``other``: the bytes of ``seq`` outside ``ACGTN``, when the caller has them (fast path).
    """
    if other is not None and not other:
        return len(seq), 0
    foreign = len(seq) - len(seq.translate(None, _FOREIGN))
    letters = len(seq) - len(seq.translate(None, _LETTERS))
    return letters, foreign


def not_nucleotide(seq: bytes) -> bool:
    """True when more than 10% of the letters of ``seq`` (upper case) are not IUPAC codes."""
    letters, foreign = counts(seq)
    return foreign > MAX_FOREIGN * letters


class NucleotideCheck:
    """Streaming check of one input file, record by record (see the module docstring)."""

    def __init__(self, name: str | Path) -> None:
        self.name = str(name)
        self.letters = self.foreign = 0
        self.first: tuple[str, str] | None = None  # (id, where) of the first foreign record

    def add(self, rec_id: str, where: str, seq: bytes, other: bytes | None = None) -> None:
        letters, foreign = counts(seq, other)
        self.letters += letters
        self.foreign += foreign
        if foreign and self.first is None and foreign > MAX_FOREIGN * letters:
            self.first = (rec_id, where)
        if self.letters >= DECIDE_AFTER:
            self.finish()

    def finish(self) -> None:
        """Raise ``refusal`` when the letters so far are not nucleotide."""
        if self.first is not None and self.foreign > MAX_FOREIGN * self.letters:
            raise refusal(self.name, *self.first)


def refusal(name: str | Path, rec_id: str, where: str = "") -> InputError:
    """The one-line error for a protein (or other non-nucleotide) record given as nucleotides."""
    at = f" ({where})" if where else ""
    return InputError(
        f"{name}: record '{rec_id}'{at} is not nucleotide sequence (more than "
        f"{MAX_FOREIGN:.0%} of its letters are outside the IUPAC nucleotide codes "
        f"{IUPAC_NUCLEOTIDES.decode()}); this command needs DNA/RNA. For proteins use "
        "`virnucpro embed` with an ESM-2 model"
    )


@dataclass(frozen=True)
class StoreComposition:
    """What the letters of an index store are."""

    letters: int
    acgtn: int
    foreign: int  # letters outside the IUPAC nucleotide codes
    first_not_nucleotide: int | None  # index position of the first non-nucleotide record
    trailing_stops: int  # records of two or more residues ending with '*'

    @property
    def acgtn_fraction(self) -> float:
        return self.acgtn / self.letters if self.letters else 0.0

    @property
    def not_nucleotide(self) -> bool:
        return self.first_not_nucleotide is not None and self.foreign > MAX_FOREIGN * self.letters

    @property
    def dna_like(self) -> bool:
        return self.letters > 0 and self.acgtn >= DNA_LIKE * self.letters


def _blocks(offsets: np.ndarray, n: int) -> Iterator[tuple[int, int]]:
    """Record ranges [start, stop) of about ``_SCAN_BYTES`` bytes (at least one record)."""
    start = 0
    while start < n:
        limit = int(offsets[start]) + _SCAN_BYTES
        stop = int(np.searchsorted(offsets, limit, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        yield start, stop
        start = stop


def scan_store(index_root: str | Path) -> StoreComposition:
    """Letter composition of a sequence index store (``io/index.py``).

    One counting pass over ``sequences.bin`` in blocks of records; only when the input is
    not nucleotide, a second pass finds the first record that is itself over 10%.
    """
    root = Path(index_root)
    offsets = np.load(root / "seq_offsets.npy", mmap_mode="r")
    n = len(offsets) - 1
    if n <= 0 or int(offsets[-1]) == 0:
        return StoreComposition(0, 0, 0, None, 0)
    data = np.memmap(root / "sequences.bin", dtype=np.uint8, mode="r")
    letters = acgtn = foreign = stops = 0
    for start, stop in _blocks(offsets, n):
        lo, hi = int(offsets[start]), int(offsets[stop])
        raw = data[lo:hi].tobytes()  # bytes.translate counts faster than a histogram
        letters += len(raw) - len(raw.translate(None, _LETTERS))
        acgtn += len(raw) - len(raw.translate(None, b"ACGTN"))
        foreign += len(raw) - len(raw.translate(None, _FOREIGN))
        block = np.frombuffer(raw, np.uint8)
        ends = np.asarray(offsets[start + 1 : stop + 1], dtype=np.int64) - lo - 1
        longer = ends > np.asarray(offsets[start:stop], dtype=np.int64) - lo  # '*' alone stays
        stops += int(((block[ends] == ord("*")) & longer).sum())
    first = None
    if foreign > MAX_FOREIGN * letters:
        for start, stop in _blocks(offsets, n):
            lo, hi = int(offsets[start]), int(offsets[stop])
            block = np.asarray(data[lo:hi])
            rel = np.asarray(offsets[start:stop], dtype=np.int64) - lo
            per_foreign = np.add.reduceat(_IS_FOREIGN[block], rel, dtype=np.int64)
            per_letters = np.add.reduceat(_IS_LETTER[block], rel, dtype=np.int64)
            bad = np.flatnonzero(per_foreign > MAX_FOREIGN * per_letters)
            if bad.size:
                first = start + int(bad[0])
                break
    return StoreComposition(letters, acgtn, foreign, first, stops)
