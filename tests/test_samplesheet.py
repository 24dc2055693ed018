"""predict --samplesheet: three samples in one run equal three separate runs, models loaded once."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from answers_support import GENOME, VIRAL_CONTIG, first_sequence, read_tsv
from conftest import predict_args, run_cli, write_fasta

from virnucpro.pipeline.chunking import reverse_complement


def write_fastq(path: Path, reads: list[tuple[str, str]]) -> Path:
    with gzip.open(path, "wt") as f:
        for header, seq in reads:
            f.write(f"@{header}\n{seq}\n+\n{'I' * len(seq)}\n")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, list[Path]]:
    genome, viral = first_sequence(GENOME), first_sequence(VIRAL_CONTIG)
    folder = tmp_path_factory.mktemp("samples")
    r1, r2 = [], []
    for i in range(10):
        fragment = (viral if i % 2 else genome)[3_000 + 1_001 * i :][:400]
        r1.append((f"frag{i}/1", fragment[:150]))
        r2.append((f"frag{i}/2", reverse_complement(fragment[-150:])))
    contigs = [(f"contig{i}", (genome if i % 2 else viral)[50_000 * (i + 1) :][:1_700 + 400 * i])
               for i in range(4)]  # fmt: skip
    reads = [(f"read{i} 1:N:0:ACGT", genome[300_000 + 701 * i :][:150]) for i in range(12)]
    return {
        "paired": [write_fastq(folder / "p_R1.fq.gz", r1), write_fastq(folder / "p_R2.fq.gz", r2)],
        "contigs": [write_fasta(folder / "contigs.fna", contigs)],
        "reads": [write_fastq(folder / "reads.fq.gz", reads)],
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from virnucpro.pipeline.selfcheck import write_random_models

    return write_random_models(tmp_path_factory.mktemp("models"))


def sheet(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def sheet_args(csv: Path, out: Path, models) -> list[str]:
    args = predict_args(Path("unused"), out, models)
    return [args[0], "--samplesheet", str(csv), *args[2:]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, inputs, models) -> tuple[Path, dict[str, Path]]:
    tmp = tmp_path_factory.mktemp("runs")
    rows = ["sample,fastq_1,fastq_2"]
    rows += [
        f"{name},{files[0]},{files[1] if len(files) > 1 else ''}" for name, files in inputs.items()
    ]
    out = tmp / "together"
    result = run_cli(*sheet_args(sheet(tmp / "samples.csv", rows), out, models))
    assert result.returncode == 0, result.stderr
    separate = {}
    for name, files in inputs.items():
        args = predict_args(files[0], tmp / name, models, *(["--paired"] if len(files) > 1 else []))
        result = run_cli(*args[:2], *map(str, files[1:]), *args[2:])
        assert result.returncode == 0, result.stderr
        separate[name] = tmp / name
    return out, separate


# Scores are compared to 1e-5: the frames share batches with other samples' frames, and fp32
# matrix products of a row differ in the last bits with the batch around it (calls and ids are
# compared exactly).
SCORE_COLUMNS = {"score1", "score2", "virus_score", "others_score", "best_virus_score", "score",
                 "mate1_score", "mate2_score", "viral_fraction", "mean_virus_score",
                 "max_virus_score"}  # fmt: skip


def assert_same_table(a: Path, b: Path) -> None:
    rows_a, rows_b = read_tsv(a), read_tsv(b)
    assert len(rows_a) == len(rows_b), a.name
    for x, y in zip(rows_a, rows_b, strict=True):
        assert list(x) == list(y)
        for key in x:
            if key in SCORE_COLUMNS and "NA" not in (x[key], y[key]):
                np.testing.assert_allclose(float(x[key]), float(y[key]), atol=1e-5, err_msg=key)
            else:
                assert x[key] == y[key], (a.name, key, x, y)


def test_samples_equal_separate_runs(runs, inputs):
    together, separate = runs
    for name in inputs:
        mine, alone = together / "samples" / name, separate[name]
        tables = ["prediction_results.txt", "prediction_results_highestscore.csv", "chunks.tsv"]
        tables += ["virnucpro_summary.tsv", "viral_regions.tsv", "skipped.tsv"]
        tables += ["pairs.tsv"] if name == "paired" else []
        for table in tables:
            assert_same_table(mine / table, alone / table)
        assert (mine / "viral.fna").read_text() == (alone / "viral.fna").read_text()
        assert (mine / "report.html").is_file()
    html = (together / "report.html").read_text()
    assert all(f"<h2>Sample {name}</h2>" in html for name in inputs)
    samples = read_tsv(together / "samples.tsv")
    assert list(samples[0]) == [
        "sample", "records", "pairs", "virus", "others", "no_call", "viral_fraction",
    ]  # fmt: skip
    assert [s["sample"] for s in samples] == list(inputs)
    by_name = {s["sample"]: s for s in samples}
    assert (by_name["paired"]["records"], by_name["paired"]["pairs"]) == ("20", "10")
    assert (by_name["contigs"]["records"], by_name["reads"]["records"]) == ("4", "12")
    for s in samples:
        summary = read_tsv(together / "samples" / s["sample"] / "virnucpro_summary.tsv")
        calls = [r["call"] for r in summary]
        assert [s["virus"], s["others"], s["no_call"]] == [
            str(calls.count(c)) for c in ("virus", "others", "no_call")
        ]


def test_each_model_is_loaded_once_per_stage(runs):
    together, _ = runs
    for stage in ("dnabert_s", "esm2"):
        logs = sorted((together / "stages" / stage / "logs").glob("worker_*.log"))
        loads = sum(log.read_text().count("model loaded") for log in logs)
        assert loads == 1, stage
    assert not list((together / "samples").glob("*/stages/dnabert_s"))
    assert not list((together / "samples").glob("*/stages/esm2"))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["sample,fastq_1", "a,{contigs}"], "the header must be sample,fastq_1,fastq_2"),
        (["sample,fastq_1,fastq_2", "a,{contigs},", "a,{reads},"], "sample 'a' already on line 2"),
        (
            ["sample,fastq_1,fastq_2", "a,{contigs},", "b,missing.fq.gz,"],
            ":3: fastq_1 of sample 'b'",
        ),
        (["sample,fastq_1,fastq_2", "../x,{contigs},"], "must be letters, digits"),
    ],
)
def test_bad_sheets_are_refused_before_any_work(tmp_path, inputs, models, lines, message):
    paths = {"contigs": inputs["contigs"][0], "reads": inputs["reads"][0]}
    csv = sheet(tmp_path / "bad.csv", [line.format(**paths) for line in lines])
    out = tmp_path / "out"
    result = run_cli(*sheet_args(csv, out, models))
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not out.exists()
