"""Faults a demanding user meets: wrong input type, odd compression, shared or foreign output
directories, damaged run records, API results that must not lie, usage errors (issue 11).

Real processes, real files; each test first reproduces the fault, then shows the behaviour.
"""

from __future__ import annotations

import bz2
import csv
import json
import lzma
import random
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import embed_args, predict_args, protein_records, read_h5, run_cli, write_fasta


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from virnucpro.pipeline.selfcheck import write_random_models

    return write_random_models(tmp_path_factory.mktemp("models"))


def dna_records(n: int = 12, seed: int = 3) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [
        (f"contig{i}", "".join(rng.choice("ACGT") for _ in range(rng.choice([80, 150, 420]))))
        for i in range(n)
    ]


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr and "this is a bug" not in stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


# -- item 1: input type ------------------------------------------------------------------------


def test_protein_fasta_to_predict_and_translate_refused(tmp_path, models):
    proteins = write_fasta(tmp_path / "genes.faa", protein_records(12))
    foreign = set("EFIJLOPQXZ")  # letters that are no IUPAC nucleotide code
    first = next(
        rid for rid, seq in protein_records(12) if sum(c in foreign for c in seq) > len(seq) / 10
    )
    out = tmp_path / "out"
    result = run_cli(*predict_args(proteins, out, models))
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert str(proteins) in line and f"'{first}'" in line and "virnucpro embed" in line
    assert not out.exists()  # nothing half-written, no directory left behind
    result = run_cli("translate", str(proteins), "-o", str(tmp_path / "tr"))
    assert result.returncode == 1 and f"'{first}'" in one_error_line(result.stderr)
    assert not any((tmp_path / "tr").glob("*.fa*"))
    # IUPAC codes and a little noise are still nucleotide
    iupac = write_fasta(
        tmp_path / "iupac.fa", [("r1", "ACGTRYSWKMBDHVN" * 8 + "ACGTACGT"), ("odd", "AXG")]
    )  # a stray short record with an X does not make a protein file
    result = run_cli("translate", str(iupac), "-o", str(tmp_path / "tr2"))
    assert result.returncode == 0, result.stderr


def test_dnabert_refuses_proteins(tmp_path, models):
    records = dna_records(1) + [("not_dna", "MKVLAEFIQPWYLLEEKKQ" * 10), ("p2", "MEEPQSDPSV")]
    inputs = write_fasta(tmp_path / "mixed.fa", records)
    out = tmp_path / "out"
    result = run_cli(*embed_args(inputs, out, models["dnabert"]))
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert "'not_dna'" in line and "mixed.fa" in line and "(line " in line
    assert not out.exists()


def test_prodigal_stops_are_stripped(tmp_path, tiny_esm_hf):
    records = protein_records(16, seed=5)
    plain = write_fasta(tmp_path / "plain.faa", records)
    prodigal = write_fasta(
        tmp_path / "prodigal.faa",
        [(rid, seq if seq.endswith("*") else seq + "*") for rid, seq in records],
    )
    runs = {}
    for name, path in (("plain", plain), ("prodigal", prodigal)):
        out = tmp_path / name
        result = run_cli(*embed_args(path, out, tiny_esm_hf))
        assert result.returncode == 0, result.stderr
        runs[name] = out
    ids_a, vec_a = read_h5(runs["plain"] / "embeddings.h5")
    ids_b, vec_b = read_h5(runs["prodigal"] / "embeddings.h5")
    assert ids_a == ids_b
    np.testing.assert_array_equal(vec_a, vec_b)  # the '*' is not embedded at all
    for name, out in runs.items():  # `lengths` are the records' lengths as given
        with h5py.File(out / "embeddings.h5") as f:
            extra = int(name == "prodigal")
            assert f["lengths"][()].tolist() == [len(s) + extra for _, s in records]
    check = json.loads((runs["prodigal"] / "run.json").read_text())["input_check"]
    assert check["trailing_stops_stripped"] == len(records)
    check = json.loads((runs["plain"] / "run.json").read_text())["input_check"]
    assert check["trailing_stops_stripped"] == 0


def test_esm2_on_dna_warns(tmp_path, tiny_esm_hf):
    inputs = write_fasta(tmp_path / "contigs.fa", dna_records(6))
    out = tmp_path / "out"
    args = [a for a in embed_args(inputs, out, tiny_esm_hf) if a != "--quiet"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "looks like DNA" in result.stderr
    check = json.loads((out / "run.json").read_text())["input_check"]
    assert check["acgtn_fraction"] == 1.0 and "looks like DNA" in check["warnings"][0]


# -- item 2: compression -----------------------------------------------------------------------


def test_bzip2_and_xz_read_like_plain(tmp_path):
    records = dna_records(20, seed=8)
    plain = write_fasta(tmp_path / "reads.fa", records)
    data = plain.read_bytes()
    (tmp_path / "reads.fa.bz2").write_bytes(bz2.compress(data))
    (tmp_path / "reads.fa.xz").write_bytes(lzma.compress(data))
    outputs = {}
    for name in ("reads.fa", "reads.fa.bz2", "reads.fa.xz"):
        out = tmp_path / f"out_{name}"
        result = run_cli("translate", str(tmp_path / name), "-o", str(out), "-q")
        assert result.returncode == 0, result.stderr
        files = sorted(out.glob("reads_*"))
        assert [f.name for f in files] == [
            "reads_chunked500.fa",
            "reads_identified_nucleotide.fa",
            "reads_identified_protein.faa",
        ]
        outputs[name] = [f.read_bytes() for f in files]
    assert outputs["reads.fa.bz2"] == outputs["reads.fa"] == outputs["reads.fa.xz"]
    # a damaged stream is named as such; another compression is named, not "looks binary"
    (tmp_path / "cut.fa.xz").write_bytes(lzma.compress(data)[:200])
    result = run_cli("translate", str(tmp_path / "cut.fa.xz"), "-o", str(tmp_path / "o1"))
    assert result.returncode == 1 and "xz stream is truncated or corrupt" in result.stderr
    (tmp_path / "reads.fa.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(40)))
    result = run_cli("translate", str(tmp_path / "reads.fa.zst"), "-o", str(tmp_path / "o2"))
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert "zstd-compressed" in line and "looks binary" not in line


# -- item 13: usage errors ---------------------------------------------------------------------


def test_usage_errors_exit_1_with_usage_line(tmp_path):
    fasta = write_fasta(tmp_path / "a.fa", [("a", "MKV")])
    for extra in (["--tokens-per-bach", "512"], ["--max-retries", "many"]):
        result = run_cli("embed", str(fasta), "-o", str(tmp_path / "o"), *extra)
        assert result.returncode == 1, result.stderr
        assert "usage: virnucpro" in result.stderr
        assert "error:" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("no-such-command")
    assert result.returncode == 1 and "usage: virnucpro" in result.stderr
    assert not (tmp_path / "o").exists()


# -- item 14: reasons --------------------------------------------------------------------------


def test_chunk_without_complete_codon_has_its_own_reason(tmp_path, models):
    inputs = write_fasta(
        tmp_path / "short.fa",
        [
            ("two", "AC"),
            ("all_n", "NNNNNNNN"),
            ("gappy", "ANNANNAN"),
            ("stops", "GGTTAACTAGCTAGGCCGT"),
        ],
    )
    out = tmp_path / "out"
    result = run_cli(*predict_args(inputs, out, models))
    assert result.returncode == 0, result.stderr
    with open(out / "skipped.tsv") as f:
        reasons = {row["id"]: row["reason"] for row in csv.DictReader(f, delimiter="\t")}
    for chunk in ("two_chunk_1", "all_n_chunk_1", "gappy_chunk_1"):
        assert reasons[chunk].startswith("no complete codon"), reasons
    assert reasons["stops_chunk_1"] == "no stop-free frame in any of the six frames"
