"""The embedding engine end to end: real worker processes, real HDF5, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import embed_args, protein_records, read_h5, run_cli, write_fasta

ALPHABET = (
    "<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - <null_1> <mask>"
).split()


def reference_vectors(model_dir: Path, records) -> dict[str, np.ndarray]:
    """transformers' EsmModel, fp32, one sequence at a time, mean over residue positions."""
    from transformers import EsmModel

    model = EsmModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
    index = {tok: i for i, tok in enumerate(ALPHABET)}
    out = {}
    for rid, seq in records:
        residues = [index.get(c, 3) for c in seq.upper()[:1022]]
        ids = torch.tensor([[0, *residues, 2]])
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        out[rid] = hidden[0, 1:-1].mean(0).numpy()
    return out


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory, proteins, tiny_esm_hf) -> Path:
    out = tmp_path_factory.mktemp("run") / "w1"
    result = run_cli(*embed_args(proteins, out, tiny_esm_hf))
    assert result.returncode == 0, result.stderr
    return out


def test_vectors_equal_reference(one_worker, tiny_esm_hf):
    ids, vectors = read_h5(one_worker / "embeddings.h5")
    records = protein_records()
    assert ids == [rid for rid, _ in records]  # input order
    reference = reference_vectors(tiny_esm_hf, records)
    for rid, vector in zip(ids, vectors, strict=True):
        np.testing.assert_allclose(vector, reference[rid], atol=1e-5, rtol=0)
    with h5py.File(one_worker / "embeddings.h5", "r") as f:
        truncated = dict(zip(ids, f["truncated"][()], strict=True))
        assert truncated["p_long"] and not truncated["p_one"]
        assert f.attrs["count"] == len(records)
        assert json.loads(f.attrs["layers"]) == [-1]
        assert dict(zip(ids, f["lengths"][()], strict=True))["p_long"] == 1100


@pytest.mark.parametrize("workers", [2, 3])
def test_output_independent_of_worker_count(one_worker, tmp_path, proteins, tiny_esm_hf, workers):
    out = tmp_path / f"w{workers}"
    result = run_cli(*embed_args(proteins, out, tiny_esm_hf, workers=workers))
    assert result.returncode == 0, result.stderr
    ids1, v1 = read_h5(one_worker / "embeddings.h5")
    ids, v = read_h5(out / "embeddings.h5")
    assert ids == ids1
    np.testing.assert_allclose(v, v1, atol=1e-6, rtol=0)
    report = json.loads((out / "run.json").read_text())
    assert report["counts"]["embedded"] == len(ids)
    assert sum(w["units"] for w in report["workers"]) == report["units"]["planned"]
    assert [Path(p).name for p in sorted(os.listdir(out / "logs"))] == sorted(
        ["run.log"] + [f"worker_{r}.log" for r in range(workers)]
    )


def _check_partial(out: Path, reference_dir: Path, expect_missing: set[str] | None = None):
    ids, vectors = read_h5(out / "embeddings.h5")
    all_ids = [rid for rid, _ in protein_records()]
    missing = [line.split("\t")[0] for line in (out / "missing.tsv").read_text().splitlines()[1:]]
    assert missing and set(missing).isdisjoint(ids)
    assert sorted(missing + ids) == sorted(all_ids)  # every input accounted for
    assert ids == [i for i in all_ids if i not in set(missing)]  # input order kept
    if expect_missing is not None:
        assert expect_missing <= set(missing)
    ref_ids, ref = read_h5(reference_dir / "embeddings.h5")
    row = {rid: i for i, rid in enumerate(ref_ids)}
    np.testing.assert_allclose(vectors, ref[[row[i] for i in ids]], atol=1e-6, rtol=0)
    return json.loads((out / "run.json").read_text())


def test_crash_hook_fails_rank_partial_output(one_worker, tmp_path, proteins, tiny_esm_hf):
    out = tmp_path / "crash"
    result = run_cli(
        *embed_args(proteins, out, tiny_esm_hf, "--max-retries", "0", workers=2),
        env={"VIRNUCPRO_TEST_CRASH_ID": "p007"},
    )
    assert result.returncode == 2, result.stderr
    assert "missing.tsv" in result.stderr
    report = _check_partial(out, one_worker, {"p007"})
    assert len(report["failed_ranks"]) == 1
    assert report["status"] == "partial"


def _wait_for(path: Path, text: str, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and text in (content := path.read_text()):
            return content
        time.sleep(0.1)
    raise AssertionError(f"{text!r} never appeared in {path}")


def _busy_worker_pid(log: Path) -> int:
    """The pid of a worker once it holds a unit (its per-batch delay keeps it busy)."""
    content = _wait_for(log, "INFO unit ")
    return int(content.split("(pid ")[1].split(")")[0])


def test_real_sigkill_of_a_worker(one_worker, tmp_path, proteins, tiny_esm_hf):
    out = tmp_path / "killed"
    env = dict(os.environ, VIRNUCPRO_TEST_DELAY="1")  # every batch takes a second
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "virnucpro",
            *embed_args(proteins, out, tiny_esm_hf, "--max-retries", "0", workers=2),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    os.kill(_busy_worker_pid(out / "logs" / "worker_1.log"), signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 2, stderr
    report = _check_partial(out, one_worker)
    assert report["failed_ranks"] == [1]
    assert "SIGKILL" in report["workers"][1]["deaths"][0]


def test_api_failed_ranks_and_raise(one_worker, tmp_path, proteins, tiny_esm_hf, monkeypatch):
    from virnucpro import run_esm2_multi_gpu, run_multi_gpu_inference

    monkeypatch.setenv("VIRNUCPRO_TEST_CRASH_ID", "p_one")
    options = {"devices": "cpu", "tokens_per_batch": 512, "unit_tokens": 600, "max_retries": 0}
    output, failed = run_multi_gpu_inference(
        [proteins], tmp_path / "api", {"model": str(tiny_esm_hf)}, world_size=2, **options
    )
    assert output == tmp_path / "api" / "embeddings.h5" and len(failed) == 1
    _check_partial(tmp_path / "api", one_worker, {"p_one"})
    with pytest.raises(RuntimeError, match="rank"):
        run_esm2_multi_gpu(
            [proteins], tmp_path / "api2", world_size=2, model_name=str(tiny_esm_hf), **options
        )
    monkeypatch.delenv("VIRNUCPRO_TEST_CRASH_ID")
    output = run_esm2_multi_gpu(
        [proteins], tmp_path / "api3", world_size=1, model_name=str(tiny_esm_hf), **options
    )
    assert read_h5(output)[0] == read_h5(one_worker / "embeddings.h5")[0]


BAD_INPUTS = {
    "empty.fa": (b"", "empty"),
    "text.fa": (b"hello world\nthis is not fasta\n", "line 1"),
    "binary.fa": (bytes(range(256)) * 4, "binary"),
    "header_only.fa": (b">lonely header\n", "no sequence"),
    "dupes.fa": (b">a\nMKV\n>b\nMKV\n>a\nMKL\n", "dupes.fa:5"),
}


@pytest.mark.parametrize("name", [*BAD_INPUTS, "truncated.fa.gz"])
def test_bad_input_clear_error_no_output(tmp_path, tiny_esm_hf, name):
    path = tmp_path / name
    if name == "truncated.fa.gz":
        import gzip

        data = gzip.compress(b"".join(b">s%d\nMKVLA\n" % i for i in range(2000)))
        path.write_bytes(data[: len(data) // 2])
        expected = "gzip"
    else:
        data, expected = BAD_INPUTS[name]
        path.write_bytes(data)
    out = tmp_path / "out"
    result = run_cli(*embed_args(path, out, tiny_esm_hf))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert name in lines[0] and expected in lines[0]
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_index_cache_reused_and_rerun_is_a_no_op(one_worker, proteins, tiny_esm_hf):
    before = (one_worker / "embeddings.h5").stat().st_mtime_ns
    result = run_cli(*embed_args(proteins, one_worker, tiny_esm_hf))
    assert result.returncode == 0, result.stderr
    assert (one_worker / "embeddings.h5").stat().st_mtime_ns == before


def test_changed_input_on_resume_is_refused(tmp_path, tiny_esm_hf):
    inputs = write_fasta(tmp_path / "in.fa", protein_records(12, seed=5))
    out = tmp_path / "out"
    assert run_cli(*embed_args(inputs, out, tiny_esm_hf)).returncode == 0
    before = (out / "embeddings.h5").read_bytes()
    write_fasta(inputs, protein_records(13, seed=6))
    result = run_cli(*embed_args(inputs, out, tiny_esm_hf))
    assert result.returncode == 1 and "--restart" in result.stderr
    assert (out / "embeddings.h5").read_bytes() == before
    result = run_cli(*embed_args(inputs, out, tiny_esm_hf, "--restart"))
    assert result.returncode == 0, result.stderr
    assert len(read_h5(out / "embeddings.h5")[0]) == 13
