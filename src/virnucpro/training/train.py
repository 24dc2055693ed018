"""``virnucpro train``: features through the engine, the original MLP training, the outputs.

MODEL_DIR/classifier.safetensors   the saved (best) weights + metadata (trained_classifier.py)
MODEL_DIR/training_log.tsv         one row per epoch
MODEL_DIR/metrics.json             the saved model on the validation split
MODEL_DIR/plots/{loss,roc,pr}.png
MODEL_DIR/run.json                 what ran: inputs, models, hyperparameters, counts, timings
MODEL_DIR/checkpoint.pt            the last completed epoch (resume)
MODEL_DIR/stages/{dnabert_s,esm2}/ the engine runs that computed the features (resumable)
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from virnucpro._version import __version__
from virnucpro.errors import InputError, ModelError
from virnucpro.io.atomic import atomic_path, atomic_write_json
from virnucpro.models.provenance import describe
from virnucpro.pipeline.predict import DEFAULT_DNABERT, DEFAULT_ESM
from virnucpro.training import make_dataset as md
from virnucpro.training.trainer import LOG_COLUMNS, Hyperparameters, Trainer, epoch_metrics

CLASSIFIER = "classifier.safetensors"
LOG = "training_log.tsv"
METRICS = "metrics.json"
RUN = "run.json"


@dataclass
class TrainOptions:
    esm_model: str = DEFAULT_ESM
    dnabert_model: str = DEFAULT_DNABERT
    hyper: Hyperparameters = field(default_factory=Hyperparameters)
    precision: str = "auto"
    engine: dict = field(default_factory=dict)


@dataclass
class TrainResult:
    exit_code: int
    model_dir: Path
    summary: dict


def load_dataset(data_dir: Path) -> dict:
    """dataset.json of a make-dataset DATA_DIR, its files checked against the fingerprint."""
    data_dir = Path(data_dir)
    description = data_dir / md.DESCRIPTION
    if not data_dir.is_dir():
        raise InputError(f"{data_dir}: no such folder (make one with `virnucpro make-dataset`)")
    if not description.is_file():
        raise InputError(
            f"{data_dir}: no {md.DESCRIPTION}; not a make-dataset folder "
            "(make one with `virnucpro make-dataset`)"
        )
    try:
        dataset = json.loads(description.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{description}: unreadable ({exc})") from None
    if not isinstance(dataset, dict) or dataset.get("format") != md.FORMAT:
        raise InputError(f"{description}: not a make-dataset description")
    for name in (md.TABLE, md.NUCLEOTIDES, md.PROTEINS):
        if not (data_dir / name).is_file():
            raise InputError(f"{data_dir / name}: missing from the dataset folder")
    _, fingerprint = md._checksums(data_dir)
    if fingerprint != dataset.get("fingerprint"):
        raise InputError(
            f"{data_dir}: {md.TABLE}, {md.NUCLEOTIDES} or {md.PROTEINS} changed since "
            "make-dataset wrote them (fingerprint mismatch); run make-dataset again"
        )
    for split in md.SPLITS:
        for label in ("viral", "other"):
            if not dataset["counts"]["by_label"][label][split]:
                raise InputError(f"{data_dir}: the {split} split has no {label} frame")
    return dataset


def _resolve(options: TrainOptions):
    from virnucpro.api import resolve_model

    resolved, problems = [], []
    wanted = ((options.dnabert_model, "--dnabert-model"), (options.esm_model, "--esm-model"))
    for model, flag in wanted:
        try:
            resolved.append(resolve_model(model, precision=options.precision, flag=flag))
        except ModelError as exc:
            problems.append(str(exc))
    if problems:
        raise ModelError(" | ".join(problems))
    dnabert, esm = resolved
    if dnabert.family != "dnabert_s" or esm.family != "esm2":
        raise ModelError(
            f"--dnabert-model must be a DNABERT-S and --esm-model an ESM-2 model "
            f"(got {dnabert.family} and {esm.family})"
        )
    return dnabert, esm


def training_device(engine: dict) -> str:
    """The device the MLP trains on: the first of --devices (cpu when none is a GPU)."""
    from virnucpro.engine.devices import resolve_devices

    return resolve_devices(engine.get("devices") or "auto", 1)[0]


def run_train(data_dir: Path, model_dir: Path, options: TrainOptions) -> TrainResult:
    """Train a classifier on DATA_DIR into MODEL_DIR (resuming what an earlier run did)."""
    started = time.time()
    data_dir, model_dir = Path(data_dir), Path(model_dir)
    options.hyper.check()
    dataset = load_dataset(data_dir)
    dnabert, esm = _resolve(options)
    created = not model_dir.exists()
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        return _train(data_dir, model_dir, options, dataset, dnabert, esm, started)
    except BaseException:
        if created and not (model_dir / "stages").exists():
            shutil.rmtree(model_dir, ignore_errors=True)
        raise


def _train(data_dir, model_dir, options, dataset, dnabert, esm, started) -> TrainResult:
    from virnucpro.training.data import FeatureRows
    from virnucpro.training.features import embed_frames

    engine = options.engine
    timings: dict[str, float] = {}
    stages = embed_frames(data_dir, model_dir / "stages", dnabert, esm, engine)
    timings["features"] = time.time() - started
    if stages.dnabert_h5 is None:  # --shard: this shard's share of both stages only
        return TrainResult(0, model_dir, {"shard": str(engine.get("shard"))})
    rows = FeatureRows(data_dir / md.TABLE, stages.dnabert_h5, stages.esm_h5)
    try:
        models = {"dnabert_s": describe(dnabert), "esm2": describe(esm)}
        key = {
            "dataset_fingerprint": dataset["fingerprint"],
            "models": models,
            "hyperparameters": asdict(options.hyper),
            "width": rows.width,
        }
        device = training_device(engine)
        quiet = bool(engine.get("quiet"))
        trainer = Trainer(rows, options.hyper, model_dir, key, device=device, quiet=quiet)
        trainer.resume(restart=bool(engine.get("restart")))
        t = time.time()
        state = trainer.run()
        timings["training"] = time.time() - t
        summary = _write_outputs(
            model_dir, data_dir, dataset, rows, trainer, state, models, options, device
        )
    finally:
        rows.close()
    timings["total"] = time.time() - started
    run = {
        "virnucpro_version": __version__,
        "command": "train",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data_dir": str(data_dir.resolve()),
        "dataset_fingerprint": dataset["fingerprint"],
        "chunk_size": dataset["chunk_size"],
        "models": {"dnabert_s": dnabert.fingerprint_fields(), "esm2": esm.fingerprint_fields()},
        "hyperparameters": asdict(options.hyper),
        "device": device,
        "engine": {k: v for k, v in engine.items()},
        "resumed_from_epoch": trainer.resumed_from,
        "stages": {
            name: {"embedded": r.embedded, "expected": r.expected, "output": str(r.output)}
            for name, r in stages.results.items()
        },
        **summary,
        "timings_s": timings,
    }
    atomic_write_json(model_dir / RUN, run)
    return TrainResult(0, model_dir, summary)


def _fmt(value) -> str:
    return "NA" if value is None else repr(value) if isinstance(value, float) else str(value)


def _write_log(path: Path, log: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("\t".join(LOG_COLUMNS) + "\n")
        for row in log:
            f.write("\t".join(_fmt(row[c]) for c in LOG_COLUMNS) + "\n")


def _write_outputs(model_dir, data_dir, dataset, rows, trainer, state, models, options, device):
    from virnucpro.pipeline.trained_classifier import save_trained
    from virnucpro.training.metrics import plot_curves, plot_loss
    from virnucpro.training.trainer import evaluate_split

    val = rows.splits["validation"]
    val_loss, probabilities = evaluate_split(trainer.model, rows, val, trainer.model_device())
    metrics = {
        "split": "validation",
        "best_epoch": state.best_epoch,
        "val_loss": val_loss,
        **epoch_metrics(val.labels, probabilities),
    }
    counts = {
        split: {
            "total": len(s),
            "virus": int(s.labels.sum()),
            "others": int(len(s) - s.labels.sum()),
        }
        for split, s in rows.splits.items()
    }
    metadata = {
        "chunk_size": dataset["chunk_size"],
        "class_names": ["others", "virus"],
        "feature_layout": [
            {"model": "dnabert_s", "start": 0, "stop": rows.dna_dim},
            {"model": "esm2", "start": rows.dna_dim, "stop": rows.width},
        ],
        "feature_models": models,
        "dataset_fingerprint": dataset["fingerprint"],
        "hyperparameters": asdict(options.hyper),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "validation_metrics": {k: v for k, v in metrics.items() if k != "split"},
        "virnucpro_version": __version__,
    }
    save_trained(trainer.model, model_dir / CLASSIFIER, metadata)
    _write_log(model_dir / LOG, state.log)
    atomic_write_json(model_dir / METRICS, {**metrics, "counts_by_split": counts})
    plot_loss(state.log, state.best_epoch, model_dir / "plots" / "loss.png")
    plot_curves({"validation": (val.labels, probabilities[:, 1])}, model_dir / "plots")
    return {
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "stopped_early": state.epoch < options.hyper.epochs,
        "counts": counts,
        "validation": {k: metrics[k] for k in ("val_loss", "accuracy", "f1", "mcc", "auroc")},
    }


def describe_result(result: TrainResult) -> str:
    s = result.summary
    if "shard" in s:
        return (
            f"shard {s['shard']} of both feature stages done in {result.model_dir}; when every "
            "shard is done, run the same command without --shard to train"
        )
    v = s["validation"]
    return (
        f"trained {s['epochs_run']} epochs (saved epoch {s['best_epoch']}): validation loss "
        f"{v['val_loss']:.4f}, accuracy {v['accuracy']:.4f}, MCC {v['mcc']:.4f} on "
        f"{s['counts']['validation']['total']} frames -> {result.model_dir / CLASSIFIER}"
    )
