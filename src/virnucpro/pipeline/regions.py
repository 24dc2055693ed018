"""Viral regions: maximal runs of viral chunks in a record, as intervals of the record.

A run starts and ends at a chunk called virus. Inside a run, chunks without a scored frame do
not break it, and neither does one isolated chunk called others between viral ones; two or
more others chunks in a gap end it. In records of 3 or more chunks a run needs at least 2
viral chunks. A region is the union of its chunks' spans. A record called virus as a whole
gives one region spanning the record instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from virnucpro.pipeline.tables import format_score
from virnucpro.pipeline.track import Chunk

REGIONS_TSV = "viral_regions.tsv"
REGIONS_BED = "viral_regions.bed"
REGIONS_FNA = "viral_regions.fna"
TSV_HEADER = "record\tregion\tstart\tend\tlength\tchunks\tmean_virus_score\tmax_virus_score\n"
MAX_BRIDGED_OTHERS = 1  # others chunks a gap between viral chunks may hold and stay one run
MIN_VIRAL_CHUNKS = 2  # viral chunks a run needs in records of MIN_CHUNKS_FOR_RULE chunks or more
MIN_CHUNKS_FOR_RULE = 3


@dataclass(frozen=True)
class Region:
    record: str
    number: int  # 1-based within the record
    start: int
    end: int
    chunks: int  # chunks the region covers, scored or not
    mean_virus: float  # mean of max P(virus) over the region's scored chunks
    max_virus: float

    @property
    def name(self) -> str:
        return f"{self.record}_region_{self.number}"

    @property
    def length(self) -> int:
        return self.end - self.start

    def tsv_row(self) -> str:
        return (
            f"{self.record}\t{self.name}\t{self.start}\t{self.end}\t{self.length}\t"
            f"{self.chunks}\t{format_score(self.mean_virus)}\t{format_score(self.max_virus)}\n"
        )

    def bed_row(self) -> str:
        """BED6: chrom, 0-based start, end, name, score 0-1000 (mean P(virus)), strand."""
        score = min(1000, max(0, round(1000 * self.mean_virus)))
        return f"{self.record}\t{self.start}\t{self.end}\t{self.name}\t{score}\t.\n"

    @property
    def fasta_id(self) -> str:
        return f"{self.record}|{self.start}-{self.end}"


def viral_runs(track: Sequence[Chunk]) -> list[tuple[int, int]]:
    """``(first, last)`` positions in ``track`` of each run of viral chunks (rules above)."""
    viral = [i for i, c in enumerate(track) if c.call == "virus"]
    runs: list[list[int]] = []
    for i in viral:
        if runs:
            gap = track[runs[-1][-1] + 1 : i]
            if sum(1 for c in gap if c.call == "others") <= MAX_BRIDGED_OTHERS:
                runs[-1].append(i)
                continue
        runs.append([i])
    needed = MIN_VIRAL_CHUNKS if len(track) >= MIN_CHUNKS_FOR_RULE else 1
    return [(run[0], run[-1]) for run in runs if len(run) >= needed]


def _region(record: str, number: int, chunks: Sequence[Chunk]) -> Region:
    scores = [c.virus for c in chunks if c.scored]
    return Region(
        record,
        number,
        min(c.start for c in chunks),
        max(c.end for c in chunks),
        len(chunks),
        sum(scores) / len(scores),
        max(scores),
    )


def find_regions(record: str, track: Sequence[Chunk], record_is_viral: bool) -> list[Region]:
    """The viral regions of one record (one spanning it when the record is called virus)."""
    if record_is_viral:
        return [_region(record, 1, track)]
    return [
        _region(record, n, track[first : last + 1])
        for n, (first, last) in enumerate(viral_runs(track), start=1)
    ]
