"""The score track of a record: every chunk's span in the record and its frame maxima.

Spans come from the chunking rule (SPEC 1.1, the overlap quirk included: the last chunk can be
short and overlap its neighbour by more than the others). A chunk's scores are the maxima of
P(virus) and P(others) over its scored frames, and its call is the original consensus rule
(virus when max P(virus) >= max P(others), ties virus). Written to ``OUT_DIR/chunks.tsv``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from virnucpro.pipeline.tables import format_score
from virnucpro.pipeline.translate import fast_bounds

CHUNKS = "chunks.tsv"
HEADER = "record\tchunk\tstart\tend\tframes_scored\tvirus_score\tothers_score\tcall\n"


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of a record: 1-based index, 0-based half-open span, frame maxima."""

    index: int
    start: int
    end: int
    frames_scored: int = 0
    virus: float = 0.0  # max P(virus) over the scored frames
    others: float = 0.0  # max P(others) over the scored frames

    @property
    def scored(self) -> bool:
        return self.frames_scored > 0

    @property
    def call(self) -> str:
        """``virus`` / ``others`` by the original rule; ``no_call`` without a scored frame."""
        if not self.scored:
            return "no_call"
        return "virus" if self.virus >= self.others else "others"

    @property
    def score(self) -> float:
        """max P(virus) / (max P(virus) + max P(others)): >= 0.5 exactly when called virus."""
        total = self.virus + self.others
        return self.virus / total if total > 0 else 0.5


def chunk_spans(length: int, chunk_size: int) -> list[tuple[int, int]]:
    """The ``[start, end)`` spans of a record's chunks (SPEC 1.1); none for an empty record."""
    return fast_bounds(length, chunk_size)


def record_track(
    record_id: str,
    length: int,
    chunk_size: int,
    best: dict[str, list[float]],
    frames: dict[str, int],
) -> list[Chunk]:
    """Every chunk of a record, scored or not, in chunk order.

    ``best`` maps a chunk id to ``[max P(others), max P(virus)]`` and ``frames`` to its number
    of scored frames (both as kept by ``tables.PredictionWriter``).
    """
    track = []
    for i, (start, end) in enumerate(chunk_spans(length, chunk_size), start=1):
        chunk_id = f"{record_id}_chunk_{i}"
        scores = best.get(chunk_id)
        if scores is None:
            track.append(Chunk(i, start, end))
        else:
            track.append(Chunk(i, start, end, frames[chunk_id], scores[1], scores[0]))
    return track


def track_rows(record_id: str, track: list[Chunk]) -> Iterator[str]:
    """The ``chunks.tsv`` lines of the record's scored chunks."""
    for c in track:
        if c.scored:
            yield (
                f"{record_id}\t{c.index}\t{c.start}\t{c.end}\t{c.frames_scored}\t"
                f"{format_score(c.virus)}\t{format_score(c.others)}\t{c.call}\n"
            )


def write_header(handle: TextIO) -> None:
    handle.write(HEADER)
