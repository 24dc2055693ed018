"""The record-level call: a confidence-weighted vote of the record's scored chunks.

Each scored chunk i has a score s_i = max P(virus) / (max P(virus) + max P(others)) in [0, 1]
(>= 0.5 exactly when the original rule calls the chunk virus) and a confidence
w_i = |2 s_i - 1|. The record score is S = sum(w_i s_i) / sum(w_i) (0.5 when every w_i is 0):
confident chunks count more than undecided ones, and one confident chunk cannot outvote many.
The record is called virus when S >= ``threshold`` AND the viral fraction (viral chunks over
scored chunks) >= ``min_viral_fraction``; others otherwise; no_call without a scored chunk.
A record with a single scored chunk (a read) keeps that chunk's call. The confidence tier
combines the margin |2S - 1| with the agreement (share of scored chunks whose call is the
record's call): see ``confidence``. docs/FORMATS.md gives the reasoning.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from virnucpro.pipeline.track import Chunk

HIGH_MARGIN, HIGH_AGREEMENT = 0.5, 0.8
MEDIUM_MARGIN, MEDIUM_AGREEMENT = 0.2, 0.6


@dataclass(frozen=True)
class CallRule:
    """Parameters of the record call (the ``predict`` options of the same names)."""

    threshold: float = 0.5  # --record-threshold
    min_viral_fraction: float = 0.5  # --min-viral-fraction


@dataclass(frozen=True)
class RecordCall:
    call: str  # virus / others / no_call
    scored_chunks: int = 0
    viral_chunks: int = 0
    score: float | None = None  # S, None for no_call
    confidence: str | None = None  # high / medium / low, None for no_call

    @property
    def viral_fraction(self) -> float | None:
        return self.viral_chunks / self.scored_chunks if self.scored_chunks else None


def weighted_score(chunks: Sequence[Chunk]) -> float:
    """S = sum(w_i s_i) / sum(w_i) with w_i = |2 s_i - 1| over scored chunks (0.5 if all 0)."""
    total = weighted = 0.0
    for c in chunks:
        s = c.score
        w = abs(2.0 * s - 1.0)
        total += w
        weighted += w * s
    return weighted / total if total > 0 else 0.5


def confidence(score: float, agreement: float) -> str:
    """high: margin |2S-1| >= 0.5 and agreement >= 0.8; medium: >= 0.2 and >= 0.6; else low."""
    margin = abs(2.0 * score - 1.0)
    if margin >= HIGH_MARGIN and agreement >= HIGH_AGREEMENT:
        return "high"
    if margin >= MEDIUM_MARGIN and agreement >= MEDIUM_AGREEMENT:
        return "medium"
    return "low"


def call_chunks(chunks: Sequence[Chunk], rule: CallRule) -> RecordCall:
    """The call of a record (or a read pair) from its chunks; unscored chunks are ignored."""
    scored = [c for c in chunks if c.scored]
    if not scored:
        return RecordCall("no_call")
    viral = sum(1 for c in scored if c.call == "virus")
    score = weighted_score(scored)
    if len(scored) == 1:
        call = scored[0].call
    else:
        fraction = viral / len(scored)
        call = (
            "virus" if score >= rule.threshold and fraction >= rule.min_viral_fraction else "others"
        )
    agreeing = viral if call == "virus" else len(scored) - viral
    return RecordCall(call, len(scored), viral, score, confidence(score, agreeing / len(scored)))
