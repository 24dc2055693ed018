"""``virnucpro selfcheck``: the whole pipeline with small RANDOM models in the real formats.

A machinery check, not biology: it proves that reading, translation, both embedding stages,
the engine's workers, the merge, the classifier loader and the tables all work on this
machine without downloading anything. Its predictions mean nothing.
"""

from __future__ import annotations

from pathlib import Path

from virnucpro.pipeline.predict import PredictOptions, PredictResult, run_predict

NOTICE = "MACHINERY CHECK with random weights: the calls below are NOT biological predictions."


def write_random_models(folder: Path) -> dict[str, Path]:
    """A tiny ESM-2 (HF folder), a tiny DNABERT-S (folder with tokenizer.json) and an
    original-format pickled classifier sized to their joint width."""
    from virnucpro.models.classifier import write_original_format_classifier
    from virnucpro.models.tiny import write_tiny_esm2_hf
    from virnucpro.models.tiny_dnabert import write_tiny_dnabert_s

    folder.mkdir(parents=True, exist_ok=True)
    esm = write_tiny_esm2_hf(
        folder / "esm2_random", num_layers=2, hidden=32, heads=4, seed=0, use_transformers=False
    )
    dnabert = write_tiny_dnabert_s(folder / "dnabert_s_random", hidden=48, heads=12, seed=0)
    classifier = write_original_format_classifier(
        folder / "500_model_random.pth", 48 + 32, hidden=64, seed=0
    )
    return {"esm": esm, "dnabert": dnabert, "classifier": classifier}


def run_selfcheck(
    input_path: Path, out_dir: Path, chunk_size: int, engine: dict, precision: str = "auto"
) -> PredictResult:
    """``predict`` on ``input_path`` with the random models, written under ``out_dir``."""
    from virnucpro.io.paths import require_input_files

    require_input_files([input_path])
    models = write_random_models(Path(out_dir) / "random_models")
    options = PredictOptions(
        chunk_size=chunk_size,
        esm_model=str(models["esm"]),
        dnabert_model=str(models["dnabert"]),
        classifier=str(models["classifier"]),
        precision=precision,
        engine=engine,
    )
    return run_predict(input_path, Path(out_dir) / "predict", options)
