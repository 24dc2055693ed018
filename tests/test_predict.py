"""`virnucpro predict` end to end with tiny random models in the real file formats."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import REPO, SHARED, predict_args, run_cli

FIXTURES = SHARED / "fixtures" / "original"
EXAMPLE = REPO / "examples" / "example.fna"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from virnucpro.pipeline.selfcheck import write_random_models

    return write_random_models(tmp_path_factory.mktemp("models"))


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="module")
def example_run(tmp_path_factory, models) -> Path:
    inputs = tmp_path_factory.mktemp("in") / "example.fna"
    shutil.copy(EXAMPLE, inputs)
    with open(inputs, "a") as f:
        f.write(">empty_record nothing here\n>tiny_record\nAC\n")
    out = tmp_path_factory.mktemp("predict") / "out"
    result = run_cli(*predict_args(inputs, out, models, "--keep-work"))  # stages: read below
    assert result.returncode == 0, result.stderr
    return out


def direct_scores(models, nucleotides: dict[str, str], proteins: dict[str, str]) -> dict:
    """Model forward one sequence at a time, concat by id, MLP: no engine involved."""
    from virnucpro.api import resolve_model
    from virnucpro.models.base import load_embedder
    from virnucpro.models.classifier import load_classifier

    cpu = torch.device("cpu")
    dna = load_embedder(resolve_model(str(models["dnabert"])), cpu)
    esm = load_embedder(resolve_model(str(models["esm"])), cpu)
    classifier = load_classifier(models["classifier"])
    out = {}
    for frame, protein in proteins.items():
        d = dna.forward([dna.encode(nucleotides[frame])]).pooled["embeddings"][0]
        p = esm.forward([esm.encode(protein)]).pooled["embeddings"][0]
        out[frame] = classifier.predict_proba(np.concatenate([d, p])[None].astype(np.float32))[0]
    return out


def test_original_tables_equal_direct_computation(example_run, models):
    from virnucpro.io.fasta import read_records

    stage = example_run / "stages" / "translate"
    nucleotides = {r.id: r.seq for r in read_records(stage / "example_identified_nucleotide.fa")}
    proteins = {r.id: r.seq for r in read_records(stage / "example_identified_protein.faa")}
    rows = read_tsv(example_run / "prediction_results.txt")
    assert list(rows[0]) == ["Sequence_ID", "Prediction", "score1", "score2"]
    assert [r["Sequence_ID"] for r in rows] == list(proteins)  # every kept frame, in order
    expected = direct_scores(models, nucleotides, proteins)
    for row in rows:
        others, virus = float(row["score1"]), float(row["score2"])
        np.testing.assert_allclose([others, virus], expected[row["Sequence_ID"]], atol=1e-5)
        assert row["Prediction"] == ("virus" if virus > others else "others")
    highest = read_tsv(example_run / "prediction_results_highestscore.csv")
    assert list(highest[0]) == ["Modified_ID", "Is_Virus"]
    assert [h["Modified_ID"] for h in highest] == sorted({r["Sequence_ID"][:-2] for r in rows})
    for h in highest:
        group = [r for r in rows if r["Sequence_ID"][:-2] == h["Modified_ID"]]
        is_virus = max(float(r["score2"]) for r in group) >= max(float(r["score1"]) for r in group)
        assert h["Is_Virus"] == str(is_virus)


def test_every_record_accounted_for(example_run):
    from virnucpro.io.fasta import read_records

    inputs = [r.id for r in read_records(EXAMPLE)] + ["empty_record", "tiny_record"]
    summary = read_tsv(example_run / "virnucpro_summary.tsv")
    assert [s["id"] for s in summary] == inputs
    by_id = {s["id"]: s for s in summary}
    assert by_id["empty_record"]["call"] == "no_call"
    assert by_id["tiny_record"]["call"] == "no_call" and by_id["tiny_record"]["chunks"] == "1"
    skipped = read_tsv(example_run / "skipped.tsv")
    reasons = {s["id"]: s["reason"] for s in skipped}
    assert reasons["empty_record"] == "empty sequence"
    assert reasons["tiny_record_chunk_1"].startswith("no complete codon")  # 2 nt: no codon
    viral = [r.id for r in read_records(example_run / "viral.fna")]
    assert viral == [s["id"] for s in summary if s["call"] == "virus"]
    report = json.loads((example_run / "run.json").read_text())
    counts = report["counts"]
    assert counts["input_records"] == len(inputs)
    assert counts["records_virus"] + counts["records_others"] + counts["records_no_call"] == len(
        inputs
    )
    assert counts["frames_scored"] == counts["frames_kept"]
    assert report["models"]["classifier"]["sha256"]


def test_rerun_resumes_without_recomputing(example_run, models, tmp_path):
    before = (example_run / "prediction_results.txt").read_text()
    report_before = (example_run / "run.json").read_text()
    inputs = Path(json.loads(report_before)["input"]["path"])
    result = run_cli(*predict_args(inputs, example_run, models))
    assert result.returncode == 0, result.stderr
    assert (example_run / "run.json").read_text() == report_before  # complete: nothing redone
    assert (example_run / "prediction_results.txt").read_text() == before


def test_fixture_frames_reproduced_by_predict(models, tmp_path):
    out = tmp_path / "orfs"
    result = run_cli(*predict_args(FIXTURES / "test_with_orfs.fa", out, models))
    assert result.returncode == 0, result.stderr
    rows = read_tsv(out / "prediction_results.txt")
    original = read_tsv(FIXTURES / "real_model_outputs" / "prediction_results.txt")
    assert [r["Sequence_ID"] for r in rows] == [r["Sequence_ID"] for r in original]


def test_classifier_width_mismatch_is_a_clear_error(models, tmp_path):
    from virnucpro.models.classifier import write_original_format_classifier

    wrong = write_original_format_classifier(tmp_path / "3328.pth", 3328, hidden=16)
    args = predict_args(
        FIXTURES / "test_with_orfs.fa", tmp_path / "o", {**models, "classifier": wrong}
    )
    result = run_cli(*args)
    assert result.returncode == 1
    assert "expects 3328-d features" in result.stderr and "Traceback" not in result.stderr


REAL = os.environ.get("VIRNUCPRO_REAL_MODELS")


@pytest.mark.skipif(
    not REAL,
    reason="set VIRNUCPRO_REAL_MODELS to a folder with esm2_t36_3B_UR50D/, "
    "DNABERT-S/ and 500_model.pth to compare against the original's real outputs",
)
def test_real_models_match_original_outputs(tmp_path):
    import h5py

    real = Path(REAL)
    out = tmp_path / "real"
    result = run_cli(
        "predict",
        str(FIXTURES / "test_with_orfs.fa"),
        "-o",
        str(out),
        "--esm-model",
        str(real / "esm2_t36_3B_UR50D"),
        "--dnabert-model",
        str(real / "DNABERT-S"),
        "--classifier",
        str(real / "500_model.pth"),
        "--quiet",
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr
    ref = FIXTURES / "real_model_outputs"
    dna_ref = torch.load(ref / "output_1_DNABERT_S.pt", weights_only=True)
    esm_ref = torch.load(ref / "output_1_ESM.pt", weights_only=True)
    expected = {
        "dnabert_s": {
            i: np.array(d["mean_representation"])
            for i, d in zip(dna_ref["nucleotide"], dna_ref["data"], strict=True)
        },
        "esm2": {i: t.numpy() for i, t in zip(esm_ref["proteins"], esm_ref["data"], strict=True)},
    }
    for stage, vectors in expected.items():
        with h5py.File(out / "stages" / stage / "embeddings.h5", "r") as f:
            ours = dict(zip([s.decode() for s in f["ids"][()]], f["embeddings"][()], strict=True))
        for frame, vector in vectors.items():
            cosine = vector @ ours[frame] / np.linalg.norm(vector) / np.linalg.norm(ours[frame])
            assert cosine >= 0.999, (stage, frame, cosine)
    rows = read_tsv(out / "prediction_results.txt")
    original = read_tsv(ref / "prediction_results.txt")
    assert [(r["Sequence_ID"], r["Prediction"]) for r in rows] == [
        (r["Sequence_ID"], r["Prediction"]) for r in original
    ]
    for ours_row, theirs in zip(rows, original, strict=True):
        assert abs(float(ours_row["score2"]) - float(theirs["score2"])) < 1e-3
    assert (out / "prediction_results_highestscore.csv").read_text() == (
        ref / "prediction_results_highestscore.csv"
    ).read_text()


def test_selfcheck_runs_the_pipeline_offline_with_the_precision_asked(tmp_path):
    out = tmp_path / "check"
    result = run_cli(
        "selfcheck", str(EXAMPLE), "-o", str(out), "--devices", "cpu", "--workers", "1",
        "--precision", "bf16", "--keep-work",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "MACHINERY CHECK" in result.stderr and "selfcheck OK: 26 records" in result.stderr
    for name in ("prediction_results.txt", "prediction_results_highestscore.csv"):
        assert (out / "predict" / name).is_file()
    for stage in ("dnabert_s", "esm2"):
        with h5py.File(out / "predict" / "stages" / stage / "embeddings.h5", "r") as f:
            assert f.attrs["precision"] == "bfloat16"


def test_both_stages_run_packed_with_no_padding(example_run):
    """DNABERT-S packs its batches like ESM-2: no padded slot is computed in either stage,
    and each stage's HDF5 records the attention kernel used."""
    for stage, kernel in (("dnabert_s", "sdpa-alibi-per-length"), ("esm2", "sdpa-per-length")):
        report = json.loads((example_run / "stages" / stage / "run.json").read_text())
        assert report["padding_fraction"] == 0.0, stage
        assert report["tokens"] > 0
        with h5py.File(example_run / "stages" / stage / "embeddings.h5", "r") as f:
            assert f.attrs["attention"] == kernel, stage
