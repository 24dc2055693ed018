"""Shared fixtures: tiny random models in the real file formats and small inputs."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
AMINO = "ACDEFGHIKLMNPQRSTVWY"


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``python -m virnucpro ARGS`` in a real process."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "virnucpro", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def write_fasta(path: Path, records: list[tuple[str, str]], width: int = 60) -> Path:
    with open(path, "w") as f:
        for rid, seq in records:
            f.write(f">{rid} some description\n")
            for i in range(0, len(seq), width):
                f.write(seq[i : i + width] + "\n")
    return path


def protein_records(n: int = 40, seed: int = 1) -> list[tuple[str, str]]:
    """Mixed lengths: 1 residue, >1022 residues, unknown letters, lower case."""
    rng = random.Random(seed)
    records = [("p_one", "M"), ("p_long", "".join(rng.choice(AMINO) for _ in range(1100)))]
    records.append(("p_odd", "MKJ*XBZUOacd" + "".join(rng.choice(AMINO) for _ in range(20))))
    for i in range(n - len(records)):
        length = rng.choice([5, 12, 30, 45, 60, 90, 150, 240])
        records.append((f"p{i:03d}", "".join(rng.choice(AMINO) for _ in range(length))))
    rng.shuffle(records)
    return records


@pytest.fixture(scope="session")
def tiny_esm_hf(tmp_path_factory) -> Path:
    from virnucpro.models.tiny import write_tiny_esm2_hf

    return write_tiny_esm2_hf(tmp_path_factory.mktemp("models") / "tiny_esm2", seed=0)


@pytest.fixture(scope="session")
def proteins(tmp_path_factory) -> Path:
    return write_fasta(tmp_path_factory.mktemp("inputs") / "proteins.fa", protein_records())


def embed_args(
    inputs: Path, out: Path, model: Path, *extra: str, workers: int = 1, unit_tokens: int = 600
) -> list[str]:
    """``virnucpro embed`` on CPU, quiet, with small batches (512 tokens) and units."""
    return [
        "embed",
        str(inputs),
        "-o",
        str(out),
        "--model",
        str(model),
        "--devices",
        "cpu",
        "--workers",
        str(workers),
        "--tokens-per-batch",
        "512",
        "--unit-tokens",
        str(unit_tokens),
        "--quiet",
        *extra,
    ]


def predict_args(
    inputs: Path,
    out: Path,
    models: dict[str, Path],
    *extra: str,
    workers: int = 1,
    small_batches: bool = False,
) -> list[str]:
    """``virnucpro predict`` on CPU, quiet, with the models of ``write_random_models``.

    ``small_batches``: 512 tokens per batch and units of 600 tokens (many units to kill in).
    """
    small = ["--tokens-per-batch", "512", "--unit-tokens", "600"] if small_batches else []
    return [
        "predict",
        str(inputs),
        "-o",
        str(out),
        "--esm-model",
        str(models["esm"]),
        "--dnabert-model",
        str(models["dnabert"]),
        "--classifier",
        str(models["classifier"]),
        "--devices",
        "cpu",
        "--workers",
        str(workers),
        *small,
        "--quiet",
        *extra,
    ]


def read_h5(path: Path) -> tuple[list[str], np.ndarray]:
    """(ids, embeddings) of an output file."""
    with h5py.File(path, "r") as f:
        return [s.decode() for s in f["ids"][()]], f["embeddings"][()]


from training_support import train_data, train_models, trained_model  # noqa: E402, F401
