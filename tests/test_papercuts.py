"""Flag and format papercuts of issue 13, one test each, through the real command line."""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, embed_args, predict_args, run_cli, write_fasta

from virnucpro.reader import EmbeddingsFile, read_embeddings

FORMATS = (REPO / "docs" / "FORMATS.md").read_text()
EXAMPLE = REPO / "examples" / "example.fna"


def _loud(args: list[str]) -> list[str]:
    return [a for a in args if a != "--quiet"]


@pytest.fixture(scope="module")
def layered(tmp_path_factory, proteins, tiny_esm_hf):
    """``embed --layers -1,-2,2 --per-token`` as the README writes it (2 repeats -1 here)."""
    out = tmp_path_factory.mktemp("layers") / "out"
    args = _loud(embed_args(proteins, out, tiny_esm_hf, "--layers", "-1,-2,2", "--per-token"))
    result = run_cli(*args)
    return out, result


def test_layers_with_negative_numbers_parse_as_the_readme_writes_them(layered):
    out, result = layered
    assert result.returncode == 0, result.stderr
    with h5py.File(out / "embeddings.h5") as f:
        assert {"embeddings_layer_1", "embeddings_layer_2"} <= set(f)
        assert json.loads(f.attrs["layers"]) == [-1, -2]


def test_per_token_with_several_layers_stores_every_layer(layered):
    out, _ = layered
    with h5py.File(out / "embeddings.h5") as f:
        assert "per_token" not in f
        offsets = f["per_token_offsets"][()]
        lengths = np.minimum(f["lengths"][()], 1022)
        assert np.array_equal(np.diff(offsets), lengths)  # one row per residue kept
        for layer in (1, 2):
            tokens, pooled = f[f"per_token_layer_{layer}"][()], f[f"embeddings_layer_{layer}"][()]
            assert tokens.shape == (offsets[-1], pooled.shape[1])
            spans = zip(offsets[:-1], offsets[1:], strict=True)
            means = np.stack([tokens[a:b].mean(0) for a, b in spans])
            np.testing.assert_allclose(means, pooled, rtol=0, atol=1e-5)  # pooled = their mean
        assert not np.allclose(f["per_token_layer_1"][:50], f["per_token_layer_2"][:50])
    with EmbeddingsFile(out / "embeddings.h5") as e:
        seq = e.ids[3]
        assert e.dataset == "embeddings_layer_2"
        np.testing.assert_array_equal(e.per_token(seq), e.per_token(seq, layer=2))
        assert e.per_token(seq, layer=1).shape == e.per_token(seq).shape
        with pytest.raises(KeyError, match="layer 7"):
            e.per_token(seq, layer=7)


def test_a_repeated_layer_is_dropped_with_a_note(layered):
    out, result = layered
    notes = [line for line in result.stderr.splitlines() if "named twice" in line]
    assert notes == ["WARNING: layer 2 is named twice (as -1); it is computed and stored once"]
    with h5py.File(out / "embeddings.h5") as f:
        assert sorted(n for n in f if n.startswith("embeddings")) == [
            "embeddings_layer_1",
            "embeddings_layer_2",
        ]


def test_read_embeddings_picks_the_deepest_layer_by_number(tmp_path):
    path = tmp_path / "layers.h5"
    with h5py.File(path, "w") as f:
        f["ids"] = np.array(["a", "b"], dtype=h5py.string_dtype("utf-8"))
        for layer in (2, 6, 12):
            f[f"embeddings_layer_{layer}"] = np.full((2, 3), layer, np.float32)
    ids, vectors = read_embeddings(path)
    assert ids == ["a", "b"] and (vectors == 12).all()  # a string sort would give 6
    with EmbeddingsFile(path) as e:
        assert e.dataset == "embeddings_layer_12"


def _folder_commands(folder: Path, out: Path, models: dict[str, Path]) -> dict[str, list[str]]:
    p = predict_args(folder, out / "predict", models)
    return {
        "embed": ["embed", str(folder), "-o", str(out / "embed"), "--model", "esm2_t6_8M_UR50D"],
        "predict": p,
        "predict --paired": p[:2] + [str(folder), "--paired"] + p[2:],
        "translate": ["translate", str(folder), "-o", str(out / "translate")],
        "selfcheck": ["selfcheck", str(folder), "-o", str(out / "selfcheck")],
        "make-dataset": [
            "make-dataset", "--viral", str(folder), "--other", str(folder),
            "-o", str(out / "dataset"),
        ],
    }  # fmt: skip


def test_a_folder_as_input_gets_the_same_line_from_every_command(tmp_path, random_models):
    folder = tmp_path / "reads"
    folder.mkdir()
    out = tmp_path / "out"
    env = {"HF_HUB_OFFLINE": "1"}  # embed must not get as far as the model
    for name, args in _folder_commands(folder, out, random_models).items():
        result = run_cli(*args, env=env)
        assert result.returncode == 1, (name, result.stderr)
        assert result.stderr == f"error: {folder}: is a folder, not a sequence file\n", name
    assert not out.exists()  # nothing written by any of them


@pytest.fixture(scope="module")
def esm_run(tmp_path_factory, proteins, tiny_esm_hf):
    """A complete ``embed --quiet`` run."""
    out = tmp_path_factory.mktemp("esm") / "out"
    return out, run_cli(*embed_args(proteins, out, tiny_esm_hf))


@pytest.fixture(scope="module")
def partial_run(tmp_path_factory, tiny_esm_hf):
    """``embed --quiet`` with an empty record (skipped.tsv), a worker killed on p3 with no
    retry (missing.tsv) and p25 out of memory alone (failed.tsv)."""
    tmp = tmp_path_factory.mktemp("partial")
    records = [("empty", "")] + [(f"p{i}", "MKV" * (3 + i)) for i in range(30)]
    proteins = write_fasta(tmp / "p.fa", records)
    out = tmp / "out"
    env = {"VIRNUCPRO_TEST_CRASH_ID": "p3", "VIRNUCPRO_TEST_OOM_ID": "p25"}
    return out, run_cli(*embed_args(proteins, out, tiny_esm_hf, "--max-retries", "0"), env=env)


def test_quiet_prints_errors_only(tmp_path, esm_run, partial_run):
    _, ok = esm_run  # embed -q
    assert ok.returncode == 0 and ok.stderr == ""
    translate = run_cli("translate", str(EXAMPLE), "-o", str(tmp_path / "t"), "-q")
    assert translate.returncode == 0 and translate.stderr == ""
    _, partial = partial_run
    assert partial.returncode == 2  # what explains the exit status still shows
    assert partial.stderr.startswith("warning: partial result: ")
    assert partial.stderr.count("\n") == 1
    error = run_cli("merge", str(tmp_path / "nothing"), "-q")
    assert error.returncode == 1 and error.stderr.startswith("error: ")
    assert error.stderr.count("\n") == 1


def test_predict_shard_help_says_what_predict_does():
    result = run_cli("predict", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "both embedding stages" in text
    assert "run the same command without --shard: it merges both stages and classifies" in text
    embed = " ".join(run_cli("embed", "--help").stdout.split())
    assert "then `virnucpro merge`" in embed


def _documented_attributes() -> tuple[set[str], set[str]]:
    """(attributes of the File attributes table, those marked 'ESM-2 only')."""
    table = FORMATS.split("File attributes:")[1].split("Reading it:")[0]
    names, esm_only = set(), set()
    for line in table.splitlines():
        if line.startswith("| `"):
            first, meaning = line.split("|")[1:3]
            found = set(re.findall(r"`([a-z_]+)`", first))
            names |= found
            if "ESM-2 only" in meaning:
                esm_only |= found
    return names, esm_only


@pytest.fixture(scope="module")
def random_models(tmp_path_factory) -> dict[str, Path]:
    from virnucpro.pipeline.selfcheck import write_random_models

    return write_random_models(tmp_path_factory.mktemp("random_models"))


def test_hdf5_attributes_of_both_families_are_the_documented_ones(tmp_path, esm_run, random_models):
    names, esm_only = _documented_attributes()
    dna = write_fasta(tmp_path / "dna.fa", [(f"n{i}", "ACGTTGCA" * (5 + i)) for i in range(6)])
    dna_out = tmp_path / "dnabert_s"
    assert run_cli(*embed_args(dna, dna_out, random_models["dnabert"])).returncode == 0
    for family, out in (("esm2", esm_run[0]), ("dnabert_s", dna_out)):
        with h5py.File(out / "embeddings.h5") as f:
            attrs = set(f.attrs)
            assert f.attrs["model_family"] == family
        expected = names if family == "esm2" else names - esm_only
        assert attrs == expected, (family, attrs ^ expected)


def _documented_paths() -> list[str]:
    table = FORMATS.split("## Every file of a run directory")[1]
    patterns = []
    for line in table.splitlines():
        if line.startswith("| `"):
            patterns += re.findall(r"`([^`]+)`", line.split("|")[1])
    return patterns


def _undocumented(root: Path, patterns: list[str]) -> list[str]:
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    assert files
    return [f for f in files if not any(fnmatch.fnmatchcase(f, p) for p in patterns)]


def test_every_file_of_a_run_directory_is_documented(
    tmp_path, proteins, tiny_esm_hf, random_models, partial_run
):
    patterns = _documented_paths()
    partial, result = partial_run
    assert result.returncode == 2
    for name in ("skipped.tsv", "missing.tsv", "failed.tsv", "embeddings.h5", "run.json"):
        assert (partial / name).is_file(), name
    shard = tmp_path / "shard"
    args = embed_args(proteins, shard, tiny_esm_hf, "--shard", "1/2")
    assert run_cli(*args).returncode == 0  # units, shard records, run.shard1of2.json
    predict = tmp_path / "predict"
    assert run_cli(*predict_args(EXAMPLE, predict, random_models)).returncode == 0
    for run in (partial, shard, predict):
        assert _undocumented(run, patterns) == [], run.name
