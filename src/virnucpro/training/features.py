"""Training features through the engine, exactly as ``predict`` computes them.

DNABERT-S embeds DATA_DIR/frames_nucleotide.fa and ESM-2 embeds DATA_DIR/frames_protein.faa,
each an ordinary engine job under ``STAGES/dnabert_s`` and ``STAGES/esm2`` (predict's stage
code), so both resume, retry, shard and use every device. Rows are joined by id later
(``training.data``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from virnucpro.errors import VirnucproError
from virnucpro.models.base import EmbedderSpec
from virnucpro.pipeline.predict import embed_stage
from virnucpro.training.make_dataset import NUCLEOTIDES, PROTEINS


@dataclass
class FeatureStages:
    dnabert_h5: Path | None  # None while a --shard run has not merged
    esm_h5: Path | None
    results: dict  # stage name -> engine JobResult


def embed_frames(
    data_dir: Path, stages: Path, dnabert: EmbedderSpec, esm: EmbedderSpec, engine: dict
) -> FeatureStages:
    """Run both embedding stages; every frame must be embedded unless this is a shard run."""
    results = {}
    for name, fasta, spec, desc in (
        ("dnabert_s", data_dir / NUCLEOTIDES, dnabert, "DNABERT-S"),
        ("esm2", data_dir / PROTEINS, esm, "ESM-2"),
    ):
        results[name] = embed_stage(fasta, stages / name, spec, engine, desc)
    if engine.get("shard"):
        return FeatureStages(None, None, results)
    for name, result in results.items():
        if result.exit_code != 0 or result.output is None:
            raise VirnucproError(
                f"the {name} stage embedded {result.embedded} of {result.expected} training "
                f"frames ({result.missing} missing, {result.failed} failed; see "
                f"{stages / name}); training needs every frame: fix the cause and run the same "
                "command again (committed work is reused)"
            )
    return FeatureStages(results["dnabert_s"].output, results["esm2"].output, results)
