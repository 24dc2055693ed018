"""predict R1 R2 --paired: one row per pair, input order does not matter, bad pairs refused."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from answers_support import GENOME, VIRAL_CONTIG, first_sequence, read_tsv
from conftest import predict_args, run_cli

from virnucpro.pipeline.chunking import reverse_complement

PAIRS = 24
READ = 150


def write_fastq(path: Path, reads: list[tuple[str, str]]) -> Path:
    with gzip.open(path, "wt") as f:
        for header, seq in reads:
            f.write(f"@{header}\n{seq}\n+\n{'I' * len(seq)}\n")
    return path


@pytest.fixture(scope="module")
def mates(tmp_path_factory) -> tuple[Path, Path]:
    """Half the pairs named ``x/1`` ``x/2``, half Illumina style (``x 1:N:0:ACGT``)."""
    genome, viral = first_sequence(GENOME), first_sequence(VIRAL_CONTIG)
    r1, r2 = [], []
    for i in range(PAIRS):
        source = viral if i % 2 else genome
        p = 5_000 + 997 * i
        fragment = source[p : p + 400]
        names = (
            (f"p{i}/1", f"p{i}/2") if i < PAIRS // 2 else (f"p{i} 1:N:0:ACGT", f"p{i} 2:N:0:ACGT")
        )
        r1.append((names[0], fragment[:READ]))
        r2.append((names[1], reverse_complement(fragment[-READ:])))
    folder = tmp_path_factory.mktemp("reads")
    return write_fastq(folder / "R1.fq.gz", r1), write_fastq(folder / "R2.fq.gz", r2)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from virnucpro.pipeline.selfcheck import write_random_models

    return write_random_models(tmp_path_factory.mktemp("models"))


def paired(tmp: Path, models, first: Path, second: Path, name: str, quiet: bool = True):
    out = tmp / name
    args = predict_args(first, out, models, "--paired")
    args = args if quiet else [a for a in args if a != "--quiet"]  # -q: errors only
    return out, run_cli(*args[:2], str(second), *args[2:])  # predict R1 R2 -o OUT ...


@pytest.fixture(scope="module")
def runs(tmp_path_factory, models, mates) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("paired")
    forward, result = paired(tmp, models, *mates, "forward", quiet=False)
    assert result.returncode == 0, result.stderr
    assert f"{PAIRS} pairs:" in result.stderr
    swapped, result = paired(tmp, models, *reversed(mates), "swapped")
    assert result.returncode == 0, result.stderr
    return forward, swapped


def test_one_row_per_pair_with_both_mates_calls(runs):
    out = runs[0]
    rows = read_tsv(out / "pairs.tsv")
    assert list(rows[0]) == [
        "pair", "mate1_call", "mate2_call", "mate1_score", "mate2_score", "call", "score",
    ]  # fmt: skip
    assert [r["pair"] for r in rows] == [f"p{i}" for i in range(PAIRS)]
    summary = {s["id"]: s for s in read_tsv(out / "virnucpro_summary.tsv")}
    assert len(summary) == 2 * PAIRS
    for r in rows:
        for mate in ("1", "2"):
            record = summary[f"{r['pair']}/{mate}"]
            assert (r[f"mate{mate}_call"], r[f"mate{mate}_score"]) == (
                record["call"],
                record["score"],
            )
        calls = {r["mate1_call"], r["mate2_call"]} - {"no_call"}
        if len(calls) == 1:  # mates that agree (or one unscored) give their call
            assert r["call"] == calls.pop()
        elif not calls:
            assert (r["call"], r["score"]) == ("no_call", "NA")
    import json

    counts = json.loads((out / "run.json").read_text())["counts"]
    assert counts["pairs"] == PAIRS and counts["input_records"] == 2 * PAIRS
    assert counts["pairs_virus"] + counts["pairs_others"] + counts["pairs_no_call"] == PAIRS


def test_mates_in_either_order_give_the_same_calls(runs):
    forward, swapped = (read_tsv(out / "pairs.tsv") for out in runs)
    assert len(forward) == len(swapped) == PAIRS
    for a, b in zip(forward, swapped, strict=True):
        assert a["pair"] == b["pair"] and a["call"] == b["call"]
        assert (a["mate1_call"], a["mate2_call"]) == (b["mate2_call"], b["mate1_call"])
        if a["score"] != "NA":
            assert float(a["score"]) == pytest.approx(float(b["score"]), abs=2e-4)


def test_discordant_names_and_counts_are_refused(tmp_path, models, mates):
    r1, r2 = mates
    with gzip.open(r2, "rt") as f:
        lines = f.readlines()
    bad = tmp_path / "R2_bad.fq.gz"
    with gzip.open(bad, "wt") as f:
        f.writelines([*lines[: 4 * 5], "@other_read/2\n", *lines[4 * 5 + 1 :]])
    out, result = paired(tmp_path, models, r1, bad, "bad_names")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "pair 6" in result.stderr and "'other_read/2'" in result.stderr
    assert not out.exists()
    short = tmp_path / "R2_short.fq.gz"
    with gzip.open(short, "wt") as f:
        f.writelines(lines[: 4 * (PAIRS - 1)])
    out, result = paired(tmp_path, models, r1, short, "short")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"pair {PAIRS}" in result.stderr and "has no mate" in result.stderr
    assert not out.exists()
