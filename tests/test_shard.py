"""`--shard I/N` runs and `virnucpro merge` (job arrays), for embed and predict."""

from __future__ import annotations

import shutil

import numpy as np
from conftest import embed_args, predict_args, read_h5, run_cli
from test_predict import EXAMPLE


def test_three_shards_then_merge_equal_a_single_run(tmp_path, proteins, tiny_esm_hf):
    single = tmp_path / "single"
    assert run_cli(*embed_args(proteins, single, tiny_esm_hf)).returncode == 0
    sharded = tmp_path / "sharded"
    for i in range(3):
        args = embed_args(proteins, sharded, tiny_esm_hf, "--shard", f"{i}/3")
        result = run_cli(*[a for a in args if a != "--quiet"])  # -q: errors only
        assert result.returncode == 0, result.stderr
        assert "virnucpro merge" in result.stderr
        assert not (sharded / "embeddings.h5").exists()
    result = run_cli("merge", str(sharded), "--quiet")
    assert result.returncode == 0, result.stderr
    ids, vectors = read_h5(sharded / "embeddings.h5")
    ids1, vectors1 = read_h5(single / "embeddings.h5")
    assert ids == ids1
    np.testing.assert_allclose(vectors, vectors1, atol=1e-6, rtol=0)


def test_merge_with_a_missing_shard_names_it(tmp_path, proteins, tiny_esm_hf):
    out = tmp_path / "out"
    for i in (0, 2):
        assert run_cli(*embed_args(proteins, out, tiny_esm_hf, "--shard", f"{i}/3")).returncode == 0
    result = run_cli("merge", str(out), "--quiet")
    assert result.returncode == 1
    assert "1/3" in result.stderr and "missing" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (out / "embeddings.h5").exists()


def test_merge_of_a_directory_without_job_is_a_clear_error(tmp_path):
    result = run_cli("merge", str(tmp_path), "--quiet")
    assert result.returncode == 1 and "no virnucpro job" in result.stderr


def test_predict_shards_then_final_run_equals_single_run(tmp_path):
    from virnucpro.pipeline.selfcheck import write_random_models

    models = write_random_models(tmp_path / "models")
    inputs = tmp_path / "example.fna"
    shutil.copy(EXAMPLE, inputs)
    single = tmp_path / "single"
    assert run_cli(*predict_args(inputs, single, models)).returncode == 0
    sharded = tmp_path / "sharded"
    for i in range(2):
        result = run_cli(*predict_args(inputs, sharded, models, "--shard", f"{i}/2"))
        assert result.returncode == 0, result.stderr
        assert not (sharded / "prediction_results.txt").exists()
    result = run_cli(*predict_args(inputs, sharded, models))
    assert result.returncode == 0, result.stderr
    for name in (
        "prediction_results.txt",
        "prediction_results_highestscore.csv",
        "virnucpro_summary.tsv",
    ):
        ours = (sharded / name).read_text().splitlines()
        theirs = (single / name).read_text().splitlines()
        assert [line.split("\t")[0] for line in ours] == [line.split("\t")[0] for line in theirs]
        for a, b in zip(ours[1:], theirs[1:], strict=True):
            for x, y in zip(a.split("\t"), b.split("\t"), strict=True):
                try:
                    assert abs(float(x) - float(y)) < 1e-5
                except ValueError:
                    assert x == y
