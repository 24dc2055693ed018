"""Hub cache, checksums and ESM-2 resolution, with the network blocked throughout.

Every test runs with ``HF_HUB_OFFLINE=1``, an empty ``VIRNUCPRO_CACHE`` and sockets that
refuse to connect. Cached downloads are simulated by writing files into the real Hugging
Face cache layout (``hub/models--org--name/snapshots/<commit>/``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from virnucpro.errors import InputError, ModelError
from virnucpro.models import hub
from virnucpro.models.base import load_embedder
from virnucpro.models.esm2 import encode_protein
from virnucpro.models.missing import ModelsUnavailable
from virnucpro.models.registry import (
    CLASSIFIERS,
    DNABERT_S,
    ESM2_GEOMETRY,
    ESM2_HUB,
    esm2_hub_entry,
    hub_files,
    resolve_classifier,
)
from virnucpro.models.tiny import write_tiny_esm2_fairesm, write_tiny_esm2_hf

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch) -> Path:
    """Empty cache, HF_HUB_OFFLINE=1 and no sockets: nothing here may touch the network."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("VIRNUCPRO_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hub"))  # the standard HF cache, here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in ("VIRNUCPRO_MODELS", "VIRNUCPRO_PINS"):
        monkeypatch.delenv(name, raising=False)

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return cache


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_tiny_esm2_hf(tmp_path_factory.mktemp("tiny") / "esm2", seed=1)


def _snapshot(cache: Path, repo_id: str, commit: str = COMMIT, main: bool = False) -> Path:
    """A folder in the Hugging Face cache layout, as a finished download leaves it."""
    repo = cache / "hub" / ("models--" + repo_id.replace("/", "--"))
    folder = repo / "snapshots" / commit
    folder.mkdir(parents=True, exist_ok=True)
    if main:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------- registry


def test_registry_pins_the_esm2_family_dnabert_and_classifiers():
    spec_table = {
        "esm2_t6_8M_UR50D": (6, 320, 20),
        "esm2_t12_35M_UR50D": (12, 480, 20),
        "esm2_t30_150M_UR50D": (30, 640, 20),
        "esm2_t33_650M_UR50D": (33, 1280, 20),
        "esm2_t36_3B_UR50D": (36, 2560, 40),
        "esm2_t48_15B_UR50D": (48, 5120, 40),
    }
    assert {k: (g.layers, g.dim, g.heads) for k, g in ESM2_GEOMETRY.items()} == spec_table
    assert set(ESM2_HUB) == set(spec_table)
    for name, entry in (*ESM2_HUB.items(), ("dnabert", DNABERT_S)):
        if name != "dnabert":
            assert entry.repo_id == f"facebook/{name}" and esm2_hub_entry(name)[1] is entry
            assert esm2_hub_entry(entry.repo_id.upper())[0] == name
        assert re.fullmatch(r"[0-9a-f]{40}", entry.revision)
        assert "config.json" in entry.files
        for digest in entry.files.values():
            assert digest is None or re.fullmatch(r"[0-9a-f]{64}", digest)
        assert hub_files(entry.repo_id) == (entry.revision, dict(entry.files))
    assert DNABERT_S.repo_id == "zhihan1996/DNABERT-S"
    assert {"config.json", "pytorch_model.bin", "tokenizer.json"} <= set(DNABERT_S.files)
    for size in (300, 500):
        assert CLASSIFIERS[size].url == (
            "https://raw.githubusercontent.com/Li-Jing-1997/VirNucPro/"
            f"0f93f2755a7ea1acd3ff1bcf182892f960ef3326/{size}_model.pth"
        )
    with pytest.raises(ModelError, match="not a registered"):
        hub_files("someone/else")


def test_sha256_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 10_000_000)
    assert hub.sha256_file(path) == hashlib.sha256(b"x" * 10_000_000).hexdigest()


# --------------------------------------------------------------------------- offline messages


@pytest.mark.parametrize("flag", ["--esm-model", "--model"])
def test_offline_missing_model_names_repo_revision_file_and_flag(flag):
    with pytest.raises(ModelError) as excinfo:
        hub.resolve_esm2("esm2_t36_3B_UR50D", flag=flag)
    message = str(excinfo.value)
    assert isinstance(excinfo.value, ModelsUnavailable) and len(message.splitlines()) == 4
    for part in (
        "facebook/esm2_t36_3B_UR50D",
        ESM2_HUB["esm2_t36_3B_UR50D"].revision,
        "config.json",
        "HF_HUB_OFFLINE",
        "virnucpro download --models esm2_t36_3B_UR50D --dest DIR",
        "--models-dir DIR",
        "VIRNUCPRO_MODELS=DIR",
        f"local copy with {flag}",
    ):
        assert part in message


def test_offline_missing_weights_are_named_after_the_config(offline, tiny):
    folder = _snapshot(offline, "org/tiny-esm", main=True)
    shutil.copy(tiny / "config.json", folder)
    with pytest.raises(ModelError, match="org/tiny-esm at revision main, file model.safetensors"):
        hub.resolve_esm2("org/tiny-esm", flag="--esm-model")


def test_offline_missing_url_names_url_and_flag():
    url = CLASSIFIERS[500].url
    with pytest.raises(ModelError) as excinfo:
        resolve_classifier(None, 500, flag="--classifier")
    message = str(excinfo.value)
    assert url in message and "--classifier" in message
    assert "virnucpro download --models classifier-500" in message
    with pytest.raises(ModelError, match="no original classifier for chunk size 400"):
        resolve_classifier(None, 400)


# --------------------------------------------------------------------------- checksums


def test_pinned_sha256_is_enforced(offline, tiny):
    folder = _snapshot(offline, "org/tiny")
    shutil.copy(tiny / "config.json", folder)
    good = _sha(tiny / "config.json")
    assert hub.fetch_files("org/tiny", COMMIT, {"config.json": good}, flag="--x") == folder
    with pytest.raises(ModelError, match="differs from the pinned"):
        hub.fetch_files("org/tiny", COMMIT, {"config.json": "0" * 64}, flag="--x")


def test_unpinned_file_is_recorded_then_verified(offline, tiny):
    folder = _snapshot(offline, "org/tiny")
    shutil.copy(tiny / "config.json", folder)
    hub.fetch_files("org/tiny", COMMIT, {"config.json": None}, flag="--x")
    record = offline / "checksums" / "org--tiny" / COMMIT / "config.json.sha256"
    assert record.read_text().split()[0] == _sha(tiny / "config.json")
    hub.fetch_files("org/tiny", COMMIT, {"config.json": None}, flag="--x")  # verified again
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="recorded at its first download"):
        hub.fetch_files("org/tiny", COMMIT, {"config.json": None}, flag="--x")


def test_shards_named_by_an_index_are_fetched_and_verified(offline):
    folder = _snapshot(offline, "org/sharded")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002.bin"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"one")
    files = {"model.safetensors.index.json": None}
    with pytest.raises(ModelError, match="org/sharded at revision .*, file model-00002.bin"):
        hub.fetch_hub("org/sharded", COMMIT, files, flag="--m")
    (folder / "model-00002.bin").write_bytes(b"two")
    _, hashes = hub.fetch_hub("org/sharded", COMMIT, files, flag="--m")
    assert set(hashes) == {"model.safetensors.index.json", *index["weight_map"].values()}
    assert hashes["model-00002.bin"] == hashlib.sha256(b"two").hexdigest()


def test_url_cache_pinned_first_use_and_lfs_pointer(offline):
    url = "https://example.org/pinned/commit/500_model.pth"
    path = hub.url_cache_path(url)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert hub.fetch_url(url, digest, flag="--c") == path
    with pytest.raises(ModelError, match="differs from the pinned.*removed it"):
        hub.fetch_url(url, "f" * 64, flag="--c")
    assert not path.exists()  # a file that fails verification is removed
    path.write_bytes(b"weights")
    assert hub.fetch_url(url, None, flag="--c") == path
    assert path.with_name("500_model.pth.sha256").read_text().split()[0] == digest
    path.write_bytes(b"tampered")
    with pytest.raises(ModelError, match="recorded at its first download"):
        hub.fetch_url(url, None, flag="--c")
    assert not path.exists()
    path.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    with pytest.raises(ModelError, match="Git LFS pointer"):
        hub.fetch_url(url, None, flag="--c")


# --------------------------------------------------------------------------- resolve_esm2


def test_resolve_local_folder_and_pt(tiny, tmp_path):
    spec = hub.resolve_esm2(str(tiny), layers=(1, -1), per_token=True, precision="bf16")
    assert spec.family == "esm2" and spec.weights == str(tiny.resolve())
    assert spec.checksum == _sha(tiny / "model.safetensors") and spec.revision is None
    assert spec.layers == (1, -1) and spec.per_token and spec.precision == "bf16"
    assert spec.extra == {"num_layers": 2, "embed_dim": 32}
    pt = write_tiny_esm2_fairesm(tmp_path / "esm2_t2.pt", num_layers=3, hidden=16, heads=2)
    spec = hub.resolve_esm2(str(pt))
    assert spec.checksum == _sha(pt) and spec.layers == (-1,)
    with pytest.raises(InputError, match="precision"):
        hub.resolve_esm2(str(tiny), precision="fp64")
    with pytest.raises(ModelError, match="layer 5 does not exist"):
        hub.resolve_esm2(str(tiny), layers=(5,))


def test_resolve_hub_id_from_cache_records_commit_and_loads(offline, tiny):
    folder = _snapshot(offline, "org/tiny-esm", main=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny / name, folder)
    for name in ("org/tiny-esm", f"org/tiny-esm@{COMMIT}"):
        spec = hub.resolve_esm2(name, flag="--esm-model")
        assert spec.weights == str(folder) and spec.revision == COMMIT and spec.name == name
        assert spec.checksum == _sha(tiny / "model.safetensors")
    records = offline / "checksums" / "org--tiny-esm" / COMMIT
    assert sorted(p.name for p in records.iterdir()) == [
        "config.json.sha256",
        "model.safetensors.sha256",
    ]
    embedder = load_embedder(spec, torch.device("cpu"))
    assert embedder.forward([encode_protein("MKT")]).pooled["embeddings"].shape == (1, 32)


def test_registry_name_with_other_files_is_refused(offline, tiny):
    entry = ESM2_HUB["esm2_t6_8M_UR50D"]
    folder = _snapshot(offline, entry.repo_id, entry.revision)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny / name, folder)
    with pytest.raises(ModelError, match="differs from the pinned"):
        hub.resolve_esm2("esm2_t6_8M_UR50D")


def test_registry_geometry_is_checked_for_sharded_bin_weights(offline, tiny):
    entry = ESM2_HUB["esm2_t36_3B_UR50D"]
    folder = _snapshot(offline, entry.repo_id, entry.revision)
    shutil.copy(tiny / "config.json", folder)
    state = load_file(str(tiny / "model.safetensors"))
    keys = sorted(state)
    shard_names = [n for n in entry.files if n.startswith("pytorch_model-")]
    weight_map = {}
    for name, part in zip(shard_names, (keys[::2], keys[1::2]), strict=True):
        torch.save({k: state[k] for k in part}, folder / name)
        weight_map.update({k: name for k in part})
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ModelError, match="esm2_t36_3B_UR50D has 36, 2560, 40"):
        hub.resolve_esm2("esm2_t36_3B_UR50D")


def test_unknown_model_is_a_one_line_error():
    with pytest.raises(ModelError, match="not a known name") as excinfo:
        hub.resolve_esm2("esm9_imaginary")
    assert "\n" not in str(excinfo.value)


# --------------------------------------------------------------------------- names and pins


def test_download_names_and_pins_overrides(tmp_path, monkeypatch):
    from virnucpro.models.catalog import PREDICT_MODELS, select
    from virnucpro.models.registry import classifier_pins, dnabert_pin

    assert [m.name for m in select(None)] == list(PREDICT_MODELS)
    assert [m.name for m in select("facebook/ESM2_T33_650M_UR50D,dnabert-s")] == [
        "esm2_t33_650M_UR50D",
        "DNABERT-S",
    ]
    assert len(select("all")) == len(ESM2_HUB) + 1 + len(CLASSIFIERS)
    with pytest.raises(InputError, match="unknown model 'esm3'.*classifier-500"):
        select("esm3")
    pins = tmp_path / "pins.json"
    pins.write_text(
        json.dumps(
            {
                "dnabert_s": {"repo_id": "m/dna", "revision": COMMIT, "files": {"a": None}},
                "classifiers": {"500": {"url": "http://127.0.0.1:1/500_model.pth"}},
            }
        )
    )
    monkeypatch.setenv("VIRNUCPRO_PINS", str(pins))
    assert dnabert_pin().repo_id == "m/dna" and hub_files("m/dna") == (COMMIT, {"a": None})
    assert classifier_pins()[500].url == "http://127.0.0.1:1/500_model.pth"
    assert classifier_pins()[300] == CLASSIFIERS[300]  # the rest stays pinned
    pins.write_text("{not json")
    with pytest.raises(ModelError, match=f"VIRNUCPRO_PINS={pins}: unreadable pins file"):
        dnabert_pin()


def test_missing_message_merges_and_speaks_api_or_cli():
    from virnucpro.models.missing import Missing

    cli = ModelsUnavailable.merge(
        [
            ModelsUnavailable([Missing("DNABERT-S: x", "DNABERT-S", "--dnabert-model")], ["r"]),
            ModelsUnavailable([Missing("classifier-500: y", "classifier-500", "--c")], ["r"]),
        ]
    )
    lines = str(cli).splitlines()
    assert lines[0] == "2 models not available here and not downloadable now (r):"
    assert lines[3] == (
        "Where there is internet, run: virnucpro download --models DNABERT-S,classifier-500 "
        "--dest DIR"
    )
    assert "--dnabert-model / --c" in lines[4]
    api = str(ModelsUnavailable([Missing("DNABERT-S: x", "DNABERT-S", None)], ["r"], "/m"))
    assert "virnucpro.download_models(['DNABERT-S'], dest='/m')" in api
    assert "VIRNUCPRO_MODELS=/m" in api and "--" not in api
