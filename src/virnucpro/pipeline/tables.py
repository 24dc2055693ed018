"""The pipeline's result tables: the two original ones and the per-record summary."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

PREDICTIONS = "prediction_results.txt"
HIGHEST = "prediction_results_highestscore.csv"
SUMMARY = "virnucpro_summary.tsv"
VIRAL = "viral.fna"
SKIPPED = "skipped.tsv"


def format_score(value: float) -> str:
    """Scores as the original printed them: the shortest repr of a float32."""
    return str(np.float32(value))


def chunk_of(frame_id: str) -> str:
    """``{record}_chunk_{i}F1`` -> ``{record}_chunk_{i}`` (the id minus its last two characters)."""
    return frame_id[:-2]


def record_of(chunk_id: str) -> str:
    return chunk_id.rsplit("_chunk_", 1)[0]


@dataclass
class RecordScore:
    frames_scored: int = 0
    best_others: float = -1.0
    best_virus: float = -1.0
    viral_chunks: int = 0


@dataclass
class PredictionWriter:
    """Streams ``prediction_results.txt`` and keeps per-chunk and per-record maxima."""

    handle: object
    chunks: dict[str, list[float]] = field(
        default_factory=dict
    )  # chunk -> [max score1, max score2]
    frames: dict[str, int] = field(default_factory=dict)  # chunk -> frames scored
    rows: int = 0

    def __post_init__(self) -> None:
        self.handle.write("Sequence_ID\tPrediction\tscore1\tscore2\n")

    def add(self, ids: list[str], probabilities: np.ndarray) -> None:
        lines = []
        for frame, (others, virus) in zip(ids, probabilities.tolist(), strict=True):
            label = "virus" if virus > others else "others"
            lines.append(f"{frame}\t{label}\t{format_score(others)}\t{format_score(virus)}\n")
            chunk = chunk_of(frame)
            best = self.chunks.setdefault(chunk, [-1.0, -1.0])
            self.frames[chunk] = self.frames.get(chunk, 0) + 1
            best[0] = max(best[0], others)
            best[1] = max(best[1], virus)
        self.handle.write("".join(lines))
        self.rows += len(ids)

    def chunk_calls(self) -> dict[str, bool]:
        """Is_Virus per chunk: max(score2) >= max(score1) within the chunk (ties are virus)."""
        return {chunk: best[1] >= best[0] for chunk, best in self.chunks.items()}

    def write_highest(self, handle) -> None:
        handle.write("Modified_ID\tIs_Virus\n")
        calls = self.chunk_calls()
        handle.write("".join(f"{chunk}\t{calls[chunk]}\n" for chunk in sorted(calls)))

    def record_scores(self) -> dict[str, RecordScore]:
        scores: dict[str, RecordScore] = {}
        calls = self.chunk_calls()
        for chunk, (others, virus) in self.chunks.items():
            score = scores.setdefault(record_of(chunk), RecordScore())
            score.best_others = max(score.best_others, others)
            score.best_virus = max(score.best_virus, virus)
            score.viral_chunks += int(calls[chunk])
        return scores


SUMMARY_HEADER = (
    "id\tlength\tchunks\tframes_kept\tframes_scored\tviral_chunks\tbest_virus_score\tcall"
)


def summary_columns(record: tuple[str, int, int, int], score: RecordScore) -> str:
    """The summary's first seven columns of one record (``call`` and the rest follow)."""
    rid, length, chunks, kept = record
    best = format_score(score.best_virus) if score.frames_scored else "NA"
    return f"{rid}\t{length}\t{chunks}\t{kept}\t{score.frames_scored}\t{score.viral_chunks}\t{best}"
