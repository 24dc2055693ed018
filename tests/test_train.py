"""train (issue 9, part 2): a learnable task on real genomes with tiny random feature models.

Windows of the SRR492066 contig (GC 30%) are the viral class and windows of the
C. diphtheriae genome (GC 53%) the other class, chunk size 150. Composition is learnable from
any reasonable features, so validation accuracy >= 0.9 checks the machinery (engine stages,
join by id, bounded-memory reading, the training loop), not biology.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import h5py
import numpy as np
from conftest import run_cli
from safetensors.torch import load_file
from training_support import C, read_tsv, train_args


def weights(model_dir: Path) -> dict:
    return load_file(str(model_dir / "classifier.safetensors"))


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return set(wa) == set(wb) and all(bool((wa[k] == wb[k]).all()) for k in wa)


def test_learnable_task_trains(trained_model: Path, train_data: Path, train_models) -> None:
    from virnucpro.api import resolve_model
    from virnucpro.pipeline.trained_classifier import training_metadata

    metrics = json.loads((trained_model / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9, metrics
    dataset = json.loads((train_data / "dataset.json").read_text())
    assert metrics["counts"]["total"] == dataset["counts"]["by_split"]["validation"]["total"]
    cm = metrics["confusion_matrix"]
    assert cm["tn"] + cm["fp"] + cm["fn"] + cm["tp"] == metrics["counts"]["total"]
    for key in ("precision", "recall", "f1", "mcc", "auroc", "auprc"):
        assert metrics[key] is not None
    log = read_tsv(trained_model / "training_log.tsv")
    assert list(log[0]) == [
        "epoch", "train_loss", "val_loss", "accuracy", "precision", "recall", "f1", "mcc",
        "auroc", "lr",
    ]  # fmt: skip
    assert [int(r["epoch"]) for r in log] == list(range(1, len(log) + 1))
    losses = [float(r["val_loss"]) for r in log]
    # the saved model's validation loss is the minimum of the log, at the saved epoch
    assert metrics["val_loss"] == min(losses)
    assert metrics["best_epoch"] == 1 + losses.index(min(losses))
    # early stopping with patience 5 (or the epoch limit)
    assert len(log) == 200 or len(log) - metrics["best_epoch"] == 5
    assert float(log[0]["lr"]) == 2e-4 and (len(log) <= 10 or float(log[10]["lr"]) == 2e-4 * 0.85)
    meta = training_metadata(trained_model / "classifier.safetensors")
    assert meta["chunk_size"] == C and meta["class_names"] == ["others", "virus"]
    assert meta["dataset_fingerprint"] == dataset["fingerprint"]
    assert meta["best_epoch"] == metrics["best_epoch"]
    assert meta["feature_layout"][1] == {"model": "esm2", "start": 48, "stop": 80}
    esm = resolve_model(str(train_models["esm"]))
    assert meta["feature_models"]["esm2"]["sha256"] == esm.checksum
    dna = resolve_model(str(train_models["dnabert"]))
    assert meta["feature_models"]["dnabert_s"]["sha256"] == dna.checksum
    assert meta["hyperparameters"]["lr"] == 2e-4 and meta["virnucpro_version"]
    for name in ("loss", "roc", "pr"):
        assert (trained_model / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    run = json.loads((trained_model / "run.json").read_text())
    assert run["stages"]["esm2"]["embedded"] == dataset["counts"]["frames"]
    assert run["stages"]["dnabert_s"]["embedded"] == dataset["counts"]["frames"]


def test_same_seed_identical_weights_other_seed_differs(
    tmp_path: Path, trained_model: Path, train_data: Path, train_models
) -> None:
    again = tmp_path / "again"
    again.mkdir()
    shutil.copytree(trained_model / "stages", again / "stages")  # features reused, not recomputed
    r = run_cli(*train_args(train_data, again, train_models))
    assert r.returncode == 0, r.stderr
    assert same_weights(trained_model, again)
    log = (trained_model / "training_log.tsv").read_text()
    assert (again / "training_log.tsv").read_text() == log
    other = tmp_path / "seed7"
    other.mkdir()
    shutil.copytree(trained_model / "stages", other / "stages")
    r = run_cli(*train_args(train_data, other, train_models, "--seed", "7"))
    assert r.returncode == 0, r.stderr
    assert not same_weights(trained_model, other)


def test_sigkill_between_epochs_resumes_to_identical_weights(
    tmp_path: Path, trained_model: Path, train_data: Path, train_models
) -> None:
    out = tmp_path / "killed"
    out.mkdir()
    shutil.copytree(trained_model / "stages", out / "stages")
    kill = {"VIRNUCPRO_TEST_KILL_AFTER_EPOCH": "3"}
    r = run_cli(*train_args(train_data, out, train_models), env=kill)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert (out / "checkpoint.pt").exists() and not (out / "classifier.safetensors").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left
    r = run_cli(*train_args(train_data, out, train_models))
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "run.json").read_text())["resumed_from_epoch"] == 3
    assert same_weights(trained_model, out)
    log = (trained_model / "training_log.tsv").read_text()
    assert (out / "training_log.tsv").read_text() == log


def assert_refused(r, out: Path, *words: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for word in words:
        assert word in lines[0], r.stderr
    assert not out.exists()


def test_bad_training_inputs_one_line_nothing_written(
    tmp_path: Path, train_data: Path, train_models
) -> None:
    out = tmp_path / "model"
    r = run_cli(*train_args(tmp_path / "nowhere", out, train_models))
    assert_refused(r, out, "nowhere", "no such folder")
    r = run_cli(*train_args(train_models["esm"], out, train_models))
    assert_refused(r, out, "dataset.json", "make-dataset")
    edited = tmp_path / "edited"
    shutil.copytree(train_data, edited)
    with open(edited / "frames_protein.faa", "a") as f:
        f.write(">extra\nMKV\n")
    r = run_cli(*train_args(edited, out, train_models))
    assert_refused(r, out, "edited", "fingerprint")
    r = run_cli(*train_args(train_data, out, train_models, "--epochs", "0"))
    assert_refused(r, out, "--epochs")
    bad = dict(train_models, esm=tmp_path / "no_model")
    r = run_cli(*train_args(train_data, out, bad))
    assert_refused(r, out, "no_model")


def _h5(path: Path, ids: list[str], vectors: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype())
        f.create_dataset("embeddings", data=vectors)
    return path


def test_rows_joined_by_id_each_row_once_per_epoch_in_bounded_windows(tmp_path: Path) -> None:
    from virnucpro.training.data import FeatureRows, batches

    rng = np.random.default_rng(0)
    n = 1000
    ids = [f"r{i}_chunk_1F1" for i in range(n)]
    dna = rng.normal(size=(n, 3)).astype(np.float32)
    esm = rng.normal(size=(n, 5)).astype(np.float32)
    order = rng.permutation(n)  # the DNABERT-S file in another order: join by id
    _h5(tmp_path / "dna.h5", [ids[i] for i in order], dna[order])
    _h5(tmp_path / "esm.h5", ids, esm)
    split = ["validation" if i % 10 == 0 else "train" for i in range(n)]
    with open(tmp_path / "dataset.tsv", "w") as f:
        f.write("id\tlabel\tgroup\tsource\trecord\tsplit\n")
        for i in range(n):
            label = "viral" if i % 2 else "other"
            f.write(f"{ids[i]}\t{label}\tg\ts\tr{i}\t{split[i]}\n")
    rows = FeatureRows(tmp_path / "dataset.tsv", tmp_path / "dna.h5", tmp_path / "esm.h5")
    try:
        train = rows.splits["train"]
        assert len(train) == 900 and len(rows.splits["validation"]) == 100
        expected = {ids[i]: np.concatenate([dna[i], esm[i]]) for i in range(n)}
        row_of = {tuple(v.tolist()): k for k, v in expected.items()}
        seen = []
        window_rows = []
        for x, y in rows.shuffled_windows(train, np.random.default_rng(1), 64, 2):
            window_rows.append(len(y))
            for vector, label in zip(x, y, strict=True):
                frame = row_of[tuple(vector.tolist())]
                assert label == int(frame.split("_")[0][1:]) % 2
                seen.append(frame)
        assert max(window_rows) <= 128  # bounded: at most window_blocks * block_rows rows
        assert sorted(seen) == sorted(train.ids.tolist())  # each row exactly once
        windows = rows.shuffled_windows(train, np.random.default_rng(1), 64, 2)
        sizes = [len(y) for _, y in batches(windows, 32)]
        assert sum(sizes) == 900 and set(sizes[:-1]) == {32}
    finally:
        rows.close()


def test_original_restore_quirk_documented_and_fixed() -> None:
    """The best weights are a real copy: changing the model afterwards leaves them intact."""
    import copy

    import torch

    from virnucpro.training.trainer import Hyperparameters, build_model

    model = build_model(8, Hyperparameters(hidden=4))
    best = copy.deepcopy(model.state_dict())
    reference = model.state_dict()  # what the original kept
    with torch.no_grad():
        model.hidden_layer.weight.add_(1.0)
    assert torch.equal(reference["hidden_layer.weight"], model.hidden_layer.weight)
    assert not torch.equal(best["hidden_layer.weight"], model.hidden_layer.weight)
