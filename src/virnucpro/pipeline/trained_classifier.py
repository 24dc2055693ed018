"""Classifiers made by ``virnucpro train``: their metadata, and what ``predict`` takes from it.

A trained classifier is our safetensors file with one more metadata entry,
``virnucpro_training`` (JSON): chunk size, class names, feature layout, both feature models
(name, revision, sha256), dataset fingerprint, hyperparameters, best epoch, validation
metrics, virnucpro version. ``predict --classifier MODEL_DIR`` (or the file) takes its chunk
size and feature models as defaults and refuses models with other weights. Original
classifiers and plain safetensors files carry no such entry and work as before.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

from virnucpro.errors import ModelError
from virnucpro.models.base import EmbedderSpec
from virnucpro.models.classifier import MLPClassifier, _is_safetensors, save_classifier
from virnucpro.models.provenance import label, same_weights

KEY = "virnucpro_training"
FILE_NAME = "classifier.safetensors"


def save_trained(model: MLPClassifier, path: Path, metadata: dict) -> Path:
    """Write the trained weights with their training metadata."""
    return save_classifier(model, path, {KEY: json.dumps(metadata, sort_keys=True)})


def classifier_file(path: str | Path) -> Path:
    """MODEL_DIR -> MODEL_DIR/classifier.safetensors; a file stays itself."""
    path = Path(path).expanduser()
    if path.is_dir():
        inside = path / FILE_NAME
        if not inside.is_file():
            raise ModelError(f"--classifier {path}: a folder without {FILE_NAME}")
        return inside
    return path


def training_metadata(path: str | Path) -> dict | None:
    """The ``virnucpro_training`` metadata of a classifier file; None for any other file."""
    path = Path(path)
    if not path.is_file() or not _is_safetensors(path):
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(KEY)
        return json.loads(raw) if raw else None
    except Exception as exc:  # noqa: BLE001 - a damaged file: one line naming it
        raise ModelError(f"cannot read classifier {path}: {' '.join(str(exc).split())}") from None


def predict_defaults(
    classifier: str | None, chunk_size: int | None, esm: str | None, dnabert: str | None
) -> tuple[str | None, int, str | None, str | None]:
    """(classifier file, chunk size, ESM-2, DNABERT-S) for predict/evaluate.

    With a trained classifier the chunk size and the models come from it (a different
    ``--chunk-size`` is an error); otherwise the chunk size defaults to 500 and the models
    stay as given (None: the published defaults).
    """
    if classifier is None:
        return None, chunk_size or 500, esm, dnabert
    path = classifier_file(classifier)
    meta = training_metadata(path)
    if meta is None:
        return str(path), chunk_size or 500, esm, dnabert
    trained = int(meta["chunk_size"])
    if chunk_size is not None and chunk_size != trained:
        raise ModelError(
            f"--chunk-size {chunk_size} conflicts with classifier {path}, trained on "
            f"{trained}-nt chunks; leave --chunk-size out (it comes from the classifier)"
        )
    models = meta["feature_models"]
    return (
        str(path),
        trained,
        esm or models["esm2"]["name"],
        dnabert or models["dnabert_s"]["name"],
    )


def check_feature_models(path: Path, dnabert: EmbedderSpec, esm: EmbedderSpec) -> None:
    """Refuse feature models whose weights differ from those the classifier was trained on."""
    meta = training_metadata(path)
    if meta is None:
        return
    recorded = meta["feature_models"]
    problems = []
    pairs = (("dnabert_s", "--dnabert-model", dnabert), ("esm2", "--esm-model", esm))
    for key, flag, spec in pairs:
        if not same_weights(recorded[key], spec):
            given = {"name": spec.name, "revision": spec.revision, "sha256": spec.checksum}
            problems.append(
                f"{flag} {label(given)} is not the model classifier {path} was trained on: "
                f"{label(recorded[key])}"
            )
    if problems:
        advice = "pass the recorded models (or leave the flags out)"
        raise ModelError(" | ".join(problems) + f"; {advice}")
