"""Shared fixtures of the training tests: a chunk-150 DATA_DIR of real-genome windows, tiny
random feature models and one trained MODEL_DIR (session scope: the train and evaluate tests
use the same run)."""

from __future__ import annotations

import csv
from functools import cache
from pathlib import Path

import pytest
from conftest import SHARED, run_cli, write_fasta

from virnucpro.io.fasta import read_records

CONTIG = SHARED / "data" / "SRR492066.fna.gz"
GENOME = SHARED / "data" / "GCF_001457455.1_NCTC11397_genomic.fna.gz"
C = 150


@cache
def contig() -> str:
    return next(read_records(CONTIG)).seq


@cache
def genome() -> str:
    return next(read_records(GENOME)).seq


def windows(seq: str, prefix: str, n: int, length: int, offset: int) -> list[tuple[str, str]]:
    return [(f"{prefix}_{i}", seq[offset + i * length :][:length]) for i in range(n)]


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="session")
def train_models(tmp_path_factory) -> dict[str, Path]:
    from virnucpro.pipeline.selfcheck import write_random_models

    return write_random_models(tmp_path_factory.mktemp("train_models"))


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("train_data")
    viral = write_fasta(d / "viral.fa", windows(contig(), "V", 40, 1500, 0))
    other = write_fasta(d / "other.fa", windows(genome(), "G", 40, 1500, 100_000))
    out = d / "data"
    r = run_cli(
        "make-dataset",
        "--viral",
        str(viral),
        "--other",
        str(other),
        "-o",
        str(out),
        "--chunk-size",
        str(C),
        "-q",
    )
    assert r.returncode == 0, r.stderr
    return out


def train_args(data: Path, out: Path, train_models: dict[str, Path], *extra: str) -> list[str]:
    return [
        "train", str(data), "-o", str(out), "--esm-model", str(train_models["esm"]),
        "--dnabert-model", str(train_models["dnabert"]), "--devices", "cpu", "--workers", "1",
        "--quiet", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, train_data, train_models) -> Path:
    out = tmp_path_factory.mktemp("train_out") / "model"
    r = run_cli(*train_args(train_data, out, train_models))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return out
