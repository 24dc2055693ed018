"""``virnucpro evaluate``: a classifier's metrics on labelled inputs, at three levels.

Labelled FASTA/FASTQ files (``--viral``/``--other``) go through ``predict`` itself, one run
per file under EVAL_DIR/runs/, so the scores are exactly those predict gives. A make-dataset
DATA_DIR is embedded on the engine (EVAL_DIR/stages/) and classified frame by frame.

Levels: ``frame`` (score P(virus), call P(virus) > P(others), as predict's table);
``chunk`` (the original consensus rule: virus when max P(virus) >= max P(others) over its
frames; score max P(virus) / (max P(virus) + max P(others))); ``record`` (predict's record
call, a confidence-weighted vote of its chunks, and its score S). Only scored units enter the
metrics; the rest are counted as ``unscored``.

EVAL_DIR/predictions.tsv   id, level, label, score, call (one row per scored unit)
EVAL_DIR/metrics.json      the metrics of ``train`` per level, counts, models, inputs
EVAL_DIR/plots/roc.png, pr.png   one curve per level
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from virnucpro._version import __version__
from virnucpro.errors import InputError, VirnucproError
from virnucpro.io.atomic import atomic_path, atomic_write_json
from virnucpro.pipeline import tables
from virnucpro.pipeline.record_call import CallRule, call_chunks
from virnucpro.pipeline.track import CHUNKS, Chunk
from virnucpro.training.metrics import binary_metrics, plot_curves

PREDICTIONS = "predictions.tsv"
METRICS = "metrics.json"
LEVELS = ("frame", "chunk", "record")
LABEL_VALUE = {"viral": 1, "other": 0}
CALL_VALUE = {"virus": 1, "others": 0}


@dataclass
class Level:
    """The scored units of one level: ids, labels (1 virus), scores P(virus), calls."""

    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    calls: list[int] = field(default_factory=list)
    unscored: int = 0

    def add(self, unit: str, label: int, score: float, call: str) -> None:
        self.ids.append(unit)
        self.labels.append(label)
        self.scores.append(float(score))
        self.calls.append(CALL_VALUE[call])


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _chunk(virus: float, others: float, frames: int = 1) -> Chunk:
    return Chunk(0, 0, 0, frames, virus, others)


def collect_predict_run(run: Path, label: int, levels: dict[str, Level], rule: CallRule) -> None:
    """Add the frames, chunks and records of one predict output folder."""
    for row in _read_tsv(run / tables.PREDICTIONS):
        levels["frame"].add(row["Sequence_ID"], label, float(row["score2"]), row["Prediction"])
    by_record: dict[str, list[Chunk]] = defaultdict(list)
    for row in _read_tsv(run / CHUNKS):
        c = _chunk(float(row["virus_score"]), float(row["others_score"]), int(row["frames_scored"]))
        if c.call != row["call"]:
            raise VirnucproError(
                f"{run / CHUNKS}: chunk {row['chunk']} of {row['record']} "
                "does not follow the consensus rule (internal error)"
            )
        levels["chunk"].add(f"{row['record']}_chunk_{row['chunk']}", label, c.score, c.call)
        by_record[row["record"]].append(c)
    for row in _read_tsv(run / tables.SUMMARY):
        call = call_chunks(by_record.get(row["id"], []), rule)
        if call.call != row["call"]:
            raise VirnucproError(
                f"{run / tables.SUMMARY}: record {row['id']} is called {row['call']}, its chunks "
                f"give {call.call} (internal error)"
            )
        if call.score is None:
            levels["record"].unscored += 1
        else:
            levels["record"].add(row["id"], label, call.score, call.call)
    summary = json.loads((run / "run.json").read_text())["counts"]
    levels["chunk"].unscored += summary["chunks"] - summary["chunks_scored"]
    levels["frame"].unscored += summary["frames_unscored"]


def evaluate_files(inputs: list[tuple[str, Path]], eval_dir: Path, options) -> dict:
    """Predict each labelled file under EVAL_DIR/runs/ and score the three levels."""
    from virnucpro.pipeline.predict import run_predict

    levels = {name: Level() for name in LEVELS}
    runs = []
    seen: dict[str, Path] = {}
    for number, (label, path) in enumerate(inputs, start=1):
        run = eval_dir / "runs" / f"{number:03d}_{label}"
        result = run_predict(path, run, options, report=False)
        if result.exit_code not in (0, 2):
            raise VirnucproError(f"predict on {path} failed")
        for row in _read_tsv(run / tables.SUMMARY):
            if row["id"] in seen:
                raise InputError(
                    f"record {row['id']!r} is in both {seen[row['id']]} and {path}; record ids "
                    "must be unique across the evaluated files"
                )
            seen[row["id"]] = path
        collect_predict_run(run, LABEL_VALUE[label], levels, options.call_rule)
        runs.append(
            {
                "label": label,
                "path": str(path.resolve()),
                "run": str(run),
                "exit_code": result.exit_code,
            }
        )
    return {"levels": levels, "runs": runs}


def evaluate_dataset(data_dir: Path, eval_dir: Path, options, split: str) -> dict:
    """Embed a DATA_DIR's frames (EVAL_DIR/stages/) and score the frames of ``split``."""
    from virnucpro.pipeline.predict import resolve_models
    from virnucpro.training import make_dataset as md
    from virnucpro.training.data import FeatureRows
    from virnucpro.training.features import embed_frames
    from virnucpro.training.train import load_dataset
    from virnucpro.training.trainer import evaluate_split

    load_dataset(data_dir)
    dnabert, esm, _, classifier = resolve_models(options)
    stages = embed_frames(data_dir, eval_dir / "stages", dnabert, esm, options.engine)
    if stages.dnabert_h5 is None:
        return {"shard": str(options.engine.get("shard"))}
    record_of = {tables.chunk_of(r["id"]): r["record"] for r in _read_tsv(data_dir / md.TABLE)}
    rows = FeatureRows(data_dir / md.TABLE, stages.dnabert_h5, stages.esm_h5)
    levels = {name: Level() for name in LEVELS}
    try:
        names = ("train", "validation") if split == "all" else (split,)
        chunks: dict[str, list[float]] = {}
        chunk_label: dict[str, int] = {}
        for name in names:
            part = rows.splits[name]
            _, p = evaluate_split(classifier, rows, part, classifier.hidden_layer.weight.device)
            order = np.argsort(part.ids.astype(str), kind="stable")
            for i in order:
                frame, label = str(part.ids[i]), int(part.labels[i])
                others, virus = float(p[i, 0]), float(p[i, 1])
                levels["frame"].add(frame, label, virus, "virus" if virus > others else "others")
                best = chunks.setdefault(tables.chunk_of(frame), [-1.0, -1.0])
                best[0], best[1] = max(best[0], others), max(best[1], virus)
                chunk_label[tables.chunk_of(frame)] = label
    finally:
        rows.close()
    by_record: dict[str, list[Chunk]] = defaultdict(list)
    record_label: dict[str, int] = {}
    for chunk_id in sorted(chunks):
        c = _chunk(chunks[chunk_id][1], chunks[chunk_id][0])
        levels["chunk"].add(chunk_id, chunk_label[chunk_id], c.score, c.call)
        record = record_of[chunk_id]
        by_record[record].append(c)
        record_label[record] = chunk_label[chunk_id]
    for record in sorted(by_record):
        call = call_chunks(by_record[record], options.call_rule)
        levels["record"].add(record, record_label[record], call.score, call.call)
    return {"levels": levels, "data_dir": str(data_dir.resolve()), "split": split}


def _write(eval_dir: Path, found: dict, options, started: float) -> dict:
    levels: dict[str, Level] = found["levels"]
    with atomic_path(eval_dir / PREDICTIONS) as tmp, open(tmp, "w") as f:
        f.write("id\tlevel\tlabel\tscore\tcall\n")
        for name, level in levels.items():
            for unit, label, score, call in zip(
                level.ids, level.labels, level.scores, level.calls, strict=True
            ):
                f.write(
                    f"{unit}\t{name}\t{'viral' if label else 'other'}\t{score!r}\t"
                    f"{'virus' if call else 'others'}\n"
                )
    metrics = {}
    for name, level in levels.items():
        m = binary_metrics(np.array(level.labels), np.array(level.scores), np.array(level.calls))
        m["counts"]["unscored"] = level.unscored
        metrics[name] = m
    report = {
        "virnucpro_version": __version__,
        "command": "evaluate",
        "classifier": options.classifier,
        "chunk_size": options.chunk_size,
        "models": {"esm2": options.esm_model, "dnabert_s": options.dnabert_model},
        "record_call": {
            "threshold": options.call_rule.threshold,
            "min_viral_fraction": options.call_rule.min_viral_fraction,
        },
        **{k: v for k, v in found.items() if k != "levels"},
        **metrics,
        "timings_s": {"total": time.time() - started},
    }
    atomic_write_json(eval_dir / METRICS, report)
    curves = {
        name: (np.array(level.labels), np.array(level.scores)) for name, level in levels.items()
    }
    plot_curves(curves, eval_dir / "plots")
    return report


def run_evaluate(eval_dir: Path, options, *, inputs=None, data_dir=None, split="validation"):
    """Evaluate on labelled files (``inputs``: [(label, path)]) or a DATA_DIR."""
    started = time.time()
    eval_dir = Path(eval_dir)
    for _, path in inputs or []:
        if not Path(path).is_file():
            raise InputError(f"{path}: no such file")
    created = not eval_dir.exists()
    try:
        eval_dir.mkdir(parents=True, exist_ok=True)
        if data_dir is not None:
            found = evaluate_dataset(Path(data_dir), eval_dir, options, split)
        else:
            found = evaluate_files([(lab, Path(p)) for lab, p in inputs], eval_dir, options)
        if "shard" in found:
            return found
        return _write(eval_dir, found, options, started)
    except BaseException:
        if created and not any((eval_dir / d).exists() for d in ("runs", "stages")):
            shutil.rmtree(eval_dir, ignore_errors=True)  # nothing to resume: leave no trace
        raise
