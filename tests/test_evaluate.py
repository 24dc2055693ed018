"""evaluate and predict --classifier (issue 9, parts 3 and 4) with the classifier trained in
``training_support`` (chunk 150, tiny random feature models, real-genome windows).

Chain shown end to end: make-dataset -> train -> evaluate / predict --classifier MODEL_DIR
with no --chunk-size and no model flags (both come from the classifier).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_fasta
from sklearn import metrics as skm
from training_support import contig, genome, read_tsv, windows

ENGINE = ("--devices", "cpu", "--workers", "1", "--quiet")


@pytest.fixture(scope="module")
def held_out(tmp_path_factory) -> dict[str, Path]:
    """Windows the training never saw: the contig's tail, another region of the genome."""
    d = tmp_path_factory.mktemp("held_out")
    return {
        "viral": write_fasta(d / "viral.fa", windows(contig(), "HV", 12, 1500, 60_000)),
        "other": write_fasta(d / "other.fa", windows(genome(), "HG", 12, 1500, 1_000_000)),
    }


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, held_out, trained_model) -> Path:
    out = tmp_path_factory.mktemp("eval") / "eval"
    r = run_cli(
        "evaluate", "--viral", str(held_out["viral"]), "--other", str(held_out["other"]),
        "--classifier", str(trained_model), "-o", str(out), *ENGINE,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def by_level(path: Path) -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = {}
    for row in read_tsv(path):
        rows.setdefault(row["level"], []).append(row)
    return rows


def test_metrics_equal_scikit_learn_on_its_own_predictions(evaluated: Path) -> None:
    report = json.loads((evaluated / "metrics.json").read_text())
    levels = by_level(evaluated / "predictions.tsv")
    assert set(levels) == {"frame", "chunk", "record"}
    assert len(levels["record"]) == 24  # every held-out record scored
    for level, rows in levels.items():
        y = np.array([r["label"] == "viral" for r in rows], dtype=int)
        score = np.array([float(r["score"]) for r in rows])
        call = np.array([r["call"] == "virus" for r in rows], dtype=int)
        m = report[level]
        assert m["accuracy"] == skm.accuracy_score(y, call)
        assert m["precision"] == skm.precision_score(y, call, zero_division=0)
        assert m["recall"] == skm.recall_score(y, call, zero_division=0)
        assert m["f1"] == skm.f1_score(y, call, zero_division=0)
        assert m["mcc"] == skm.matthews_corrcoef(y, call)
        assert m["auroc"] == skm.roc_auc_score(y, score)
        assert m["auprc"] == skm.average_precision_score(y, score)
        tn, fp, fn, tp = skm.confusion_matrix(y, call, labels=[0, 1]).ravel().tolist()
        assert m["confusion_matrix"] == {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
        assert m["counts"]["total"] == len(rows) and m["counts"]["virus"] == int(y.sum())
    for name in ("roc", "pr"):
        assert (evaluated / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert report["chunk_size"] == 150


def test_predict_with_trained_classifier_gives_evaluates_scores(
    tmp_path: Path, evaluated: Path, held_out, trained_model: Path
) -> None:
    out = tmp_path / "pred"
    # no --chunk-size, no model flags: both come from the classifier
    r = run_cli("predict", str(held_out["viral"]), "-o", str(out), "--classifier",
                str(trained_model), *ENGINE)  # fmt: skip
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["chunk_size"] == 150
    levels = by_level(evaluated / "predictions.tsv")
    frames = {r["id"]: float(r["score"]) for r in levels["frame"]}
    rows = read_tsv(out / "prediction_results.txt")
    assert rows and all(float(r["score2"]) == frames[r["Sequence_ID"]] for r in rows)
    records = {r["id"]: r["call"] for r in levels["record"]}
    summary = read_tsv(out / "virnucpro_summary.tsv")
    assert [s["id"] for s in summary] == [f"HV_{i}" for i in range(12)]
    assert all(s["call"] == records[s["id"]] for s in summary)


def assert_refused(r, out: Path, *words: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for word in words:
        assert word in lines[0], r.stderr
    assert not out.exists()


def test_conflicting_chunk_size_or_other_esm_model_refused(
    tmp_path: Path, held_out, trained_model: Path, train_models
) -> None:
    from virnucpro.models.tiny import write_tiny_esm2_hf

    out = tmp_path / "pred"
    args = ("predict", str(held_out["viral"]), "-o", str(out), "--classifier", str(trained_model))
    r = run_cli(*args, "--chunk-size", "300", *ENGINE)
    assert_refused(r, out, "--chunk-size 300", "150", "classifier.safetensors")
    other = write_tiny_esm2_hf(tmp_path / "esm_other", num_layers=2, hidden=32, heads=4, seed=9,
                               use_transformers=False)  # fmt: skip
    r = run_cli(*args, "--esm-model", str(other), *ENGINE)
    assert_refused(r, out, "esm_other", str(train_models["esm"]), "sha256")
    r = run_cli("evaluate", "--viral", str(held_out["viral"]), "-o", str(out), "--classifier",
                str(trained_model), *ENGINE)  # fmt: skip
    assert_refused(r, out, "--other")


def test_evaluate_data_dir_matches_training_metrics(
    tmp_path: Path, train_data: Path, trained_model: Path
) -> None:
    out = tmp_path / "eval_val"
    r = run_cli("evaluate", str(train_data), "--classifier", str(trained_model), "-o", str(out),
                *ENGINE)  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "metrics.json").read_text())
    trained = json.loads((trained_model / "metrics.json").read_text())
    for key in ("accuracy", "mcc", "auroc", "confusion_matrix"):
        assert report["frame"][key] == trained[key]
    assert report["record"]["counts"]["total"] > 0 and report["split"] == "validation"
