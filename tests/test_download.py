"""``virnucpro download`` / ``models`` / ``--models-dir`` against a real local hub server.

``tests/hubserver.py`` serves tiny models in the real formats on 127.0.0.1 through the hub's
file API (``HF_ENDPOINT``); ``VIRNUCPRO_PINS`` points the registry at test revisions and
checksums. Real processes, real sockets; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, run_cli, write_fasta
from hubserver import HubServer

from virnucpro.models import netprobe
from virnucpro.models.classifier import write_original_format_classifier
from virnucpro.models.missing import ModelsUnavailable
from virnucpro.models.tiny import write_tiny_esm2_hf
from virnucpro.models.tiny_dnabert import write_tiny_dnabert_s

ESM = "esm2_t6_8M_UR50D"
ESM_REPO = f"facebook/{ESM}"
REV = "a1" * 20  # the pinned commit
REV_MAIN = "b2" * 20  # what "main" points at: other weights
DNA_REV = "c3" * 20
EXAMPLE = REPO / "examples" / "example.fna"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict[str, Path]:
    """Tiny models with the geometry of their names (ESM-2 8M: 6 layers, 320 wide, 20 heads)."""
    root = tmp_path_factory.mktemp("served")
    geometry = {"num_layers": 6, "hidden": 320, "heads": 20, "use_transformers": False}
    return {
        "esm": write_tiny_esm2_hf(root / "esm", seed=3, **geometry),
        "esm_main": write_tiny_esm2_hf(root / "esm_main", seed=4, **geometry),
        "dna": write_tiny_dnabert_s(root / "dna", seed=1, weights_format="bin"),
        "clf": write_original_format_classifier(root / "500_model.pth", 48 + 320, hidden=64),
    }


@pytest.fixture
def hub(served):
    with HubServer() as server:
        server.add_folder(ESM_REPO, REV, served["esm"])
        server.add_folder(ESM_REPO, REV_MAIN, served["esm_main"], ref="main")
        server.add_folder("zhihan1996/DNABERT-S", DNA_REV, served["dna"])
        for size in (300, 500):
            server.state.raw[f"{size}_model.pth"] = served["clf"].read_bytes()
        yield server


def write_pins(path: Path, served, url: str, *, pinned: bool = True) -> Path:
    def files(folder: Path, names: list[str]) -> dict:
        return {n: (_sha((folder / n).read_bytes()) if pinned else None) for n in names}

    clf = _sha(served["clf"].read_bytes()) if pinned else None
    pins = {
        "esm2": {
            ESM: {
                "repo_id": ESM_REPO,
                "revision": REV,
                "files": files(served["esm"], ["config.json", "model.safetensors"]),
            }
        },
        "dnabert_s": {
            "repo_id": "zhihan1996/DNABERT-S",
            "revision": DNA_REV,
            "files": files(served["dna"], ["config.json", "pytorch_model.bin", "tokenizer.json"]),
        },
        "classifiers": {
            str(size): {"url": f"{url}/raw/{size}_model.pth", "sha256": clf} for size in (300, 500)
        },
    }
    path.write_text(json.dumps(pins))
    return path


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def env(tmp_path, monkeypatch, hub, served) -> Path:
    """Empty caches under tmp_path, the endpoint at the local hub, no proxies, no token."""
    for name in (
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_ETAG_TIMEOUT",
        "HF_TOKEN",
        "VIRNUCPRO_MODELS",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("VIRNUCPRO_CACHE", str(tmp_path / "vcache"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    # huggingface_hub >= 2 fetches a registry for its User-Agent from the endpoint it read at
    # import (the public hub, in this test process): give it an empty one, nothing leaves
    try:
        from huggingface_hub.utils import _detect_agent

        monkeypatch.setattr(_detect_agent, "_registry", {"standardEnvVars": [], "harnesses": {}})
    except ImportError:
        pass
    monkeypatch.setenv("VIRNUCPRO_PINS", str(write_pins(tmp_path / "pins.json", served, hub.url)))
    netprobe.reset()
    yield tmp_path
    netprobe.reset()


def snapshot(root: Path, repo: str = ESM_REPO, rev: str = REV) -> Path:
    return root / "hf" / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / rev


# --------------------------------------------------------------------------- the cache


def test_first_download_then_cache_reuse_without_a_request(env, hub, served):
    from huggingface_hub import try_to_load_from_cache

    from virnucpro import download_models
    from virnucpro.api import resolve_model

    done = download_models([ESM])
    folder = snapshot(env)
    assert done[0].path == folder  # the standard cache under HF_HOME
    weights = (served["esm"] / "model.safetensors").read_bytes()
    assert (folder / "model.safetensors").read_bytes() == weights
    assert len(hub.gets("model.safetensors")) == 1 and len(hub.gets("config.json")) == 1
    seen = len(hub.requests())
    download_models([ESM])
    spec = resolve_model(ESM)
    assert len(hub.requests()) == seen  # reused: not one more request
    assert spec.weights == str(folder) and spec.revision == REV
    assert spec.checksum == _sha(weights)
    # another Hugging Face tool sharing HF_HOME finds the same files
    shared = try_to_load_from_cache(ESM_REPO, "config.json", revision=REV, cache_dir=env / "hf/hub")
    assert shared == str(folder / "config.json")


def test_pinned_revision_is_honoured(env, hub, served):
    from virnucpro import download_models
    from virnucpro.api import resolve_model

    download_models([ESM])
    resolves = [r.path for r in hub.requests() if "/resolve/" in r.path]
    assert resolves and all(f"/resolve/{REV}/" in p for p in resolves)
    pinned = (snapshot(env) / "model.safetensors").read_bytes()
    assert pinned == (served["esm"] / "model.safetensors").read_bytes()
    # the branch holds other weights: only an explicit revision gets them
    other = resolve_model(f"{ESM_REPO}@main")
    assert other.revision == REV_MAIN
    assert other.checksum == _sha((served["esm_main"] / "model.safetensors").read_bytes())
    assert other.checksum != _sha(pinned)


@pytest.mark.parametrize(
    "pinned, dest", [(True, False), (False, True)], ids=["pinned-sha256", "hub-etag-dest"]
)
def test_corrupted_file_is_refused_and_removed(env, hub, served, pinned, dest):
    if not pinned:
        write_pins(env / "pins.json", served, hub.url, pinned=False)
    hub.state.corrupt.add("model.safetensors")
    extra = ["--dest", str(env / "models")] if dest else []
    result = run_cli("download", "--models", ESM, *extra)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    error = result.stderr[result.stderr.index("error: ") :]
    assert "model.safetensors" in error and "removed it" in error
    assert ("differs from the pinned" if pinned else "announced by the hub") in error
    assert len(hub.gets("model.safetensors")) == 2  # refused, removed, fetched once more
    size = (served["esm"] / "model.safetensors").stat().st_size
    kept = [p for p in env.rglob("*") if p.is_file() and p.stat().st_size == size]
    assert kept == []  # no damaged copy left anywhere (cache blob, snapshot, models folder)


def test_interrupted_download_is_resumed(env, hub, served):
    from virnucpro import download_models

    hub.state.drop_first_get.add("model.safetensors")
    download_models([ESM])
    first, second = hub.gets("model.safetensors")
    assert first.range is None
    assert second.range is not None and second.range.startswith("bytes=")
    assert int(second.range[len("bytes=") :].rstrip("-")) > 0  # resumed, not restarted
    data = (served["esm"] / "model.safetensors").read_bytes()
    assert (snapshot(env) / "model.safetensors").read_bytes() == data


def test_partial_classifier_download_resumes_across_runs(env, hub, served):
    from virnucpro import download_models
    from virnucpro.models.hub import url_cache_path

    data = served["clf"].read_bytes()
    path = url_cache_path(f"{hub.url}/raw/500_model.pth")
    path.parent.mkdir(parents=True)
    path.with_name(path.name + ".incomplete").write_bytes(data[: len(data) // 2])
    download_models(["classifier-500"])
    (get,) = hub.gets("500_model.pth")
    assert get.range == f"bytes={len(data) // 2}-"
    assert path.read_bytes() == data and not path.with_name(path.name + ".incomplete").exists()


def test_eight_processes_share_one_download(env, hub, served):
    hub.state.slow["model.safetensors"] = 3.0  # long enough for the others to arrive
    # Eight real processes, each downloading (and verifying) through the library; they
    # skip the CLI's torch import so that they really start together on a small machine.
    script = (
        "from virnucpro import download_models\n"
        f"(done,) = download_models([{ESM!r}])\n"
        "print(done.files[done.model.path + '/model.safetensors']['sha256'])\n"
    )
    busy = {**os.environ, "HF_HUB_ETAG_TIMEOUT": "30"}  # a loaded machine: no false "offline"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=busy,
        )
        for _ in range(8)
    ]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    data = (served["esm"] / "model.safetensors").read_bytes()
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == _sha(data)  # every process verified the same, whole file
    assert len(hub.gets("model.safetensors")) == 1  # one download for all eight
    assert len(hub.gets("config.json")) == 1
    assert (snapshot(env) / "model.safetensors").read_bytes() == data
    assert not [p for p in env.rglob("*.incomplete")]


# --------------------------------------------------------------------------- no network


def test_network_unreachable_predict_fails_fast_with_the_way_out(env, tmp_path, monkeypatch):
    port = closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    pins = {"classifiers": {"500": {"url": f"http://127.0.0.1:{port}/500_model.pth"}}}
    (tmp_path / "offline_pins.json").write_text(json.dumps(pins))
    monkeypatch.setenv("VIRNUCPRO_PINS", str(tmp_path / "offline_pins.json"))
    # A real process; the clock starts once Python and torch are imported (on a loaded
    # machine the imports alone can take seconds) and stops when `virnucpro predict` returns.
    argv = ["predict", str(EXAMPLE), "-o", str(tmp_path / "out"), "--devices", "cpu"]
    timed = (
        "import sys, time\n"
        "import virnucpro.api, virnucpro.engine.local, virnucpro.models.classifier\n"
        "from virnucpro.cli import main\n"
        "started = time.monotonic()\n"
        f"code = main({argv!r})\n"
        "print(f'ELAPSED {time.monotonic() - started:.3f}')\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", timed], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    elapsed = float(result.stdout.split("ELAPSED")[1])
    assert elapsed < 5.0, f"took {elapsed:.1f} s"  # the bound (normally well under 1 s)
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: 3 models not available here")
    assert f"127.0.0.1:{port} is unreachable" in lines[0]
    text = result.stderr
    for part in (
        "DNABERT-S: zhihan1996/DNABERT-S at revision",
        "esm2_t36_3B_UR50D: facebook/esm2_t36_3B_UR50D at revision",
        f"classifier-500: http://127.0.0.1:{port}/500_model.pth",
        "virnucpro download --models DNABERT-S,esm2_t36_3B_UR50D,classifier-500 --dest DIR",
        "--models-dir DIR",
        "VIRNUCPRO_MODELS=DIR",
        "--dnabert-model / --esm-model / --classifier",
    ):
        assert part in text
    assert len(lines) <= 7 and "Retrying" not in text and "Traceback" not in text
    assert not (tmp_path / "out" / "prediction_results.txt").exists()


def test_unanswering_server_fails_within_5s_from_the_api(env, monkeypatch):
    from virnucpro.api import resolve_model

    with socket.socket() as silent:  # accepts connections (backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        with pytest.raises(ModelsUnavailable) as excinfo:
            resolve_model(ESM)
        elapsed = time.monotonic() - started
        assert elapsed < 5.0, f"took {elapsed:.1f} s"  # one probe, 3 s timeout
        again = time.monotonic()
        with pytest.raises(ModelsUnavailable):
            resolve_model("zhihan1996/DNABERT-S")
        assert time.monotonic() - again < 1.0  # probed once per process
    message = str(excinfo.value)
    assert "no answer within 3 s" in message or "Timeout" in message
    assert f"virnucpro.download_models(['{ESM}'], dest='DIR')" in message
    assert "VIRNUCPRO_MODELS=DIR" in message and "models_dir='DIR'" in message
    assert "--" not in message  # no CLI flags in a Python API error


def test_hf_hub_offline_sends_no_request(env, hub, monkeypatch):
    from virnucpro import download_models

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelsUnavailable, match="HF_HUB_OFFLINE is set"):
        download_models([ESM, "classifier-500"])
    assert hub.requests() == []


# --------------------------------------------------------------------------- models folder


def test_download_dest_is_enough_for_every_command(env, hub, served, tmp_path, monkeypatch):
    dest = tmp_path / "models"
    names = f"{ESM},DNABERT-S,classifier-500"
    result = run_cli("download", "--models", names, "--dest", str(dest))
    assert result.returncode == 0, result.stderr
    assert f"--models-dir {dest}" in result.stderr and f"VIRNUCPRO_MODELS={dest}" in result.stderr
    assert "B/s" in result.stderr  # the progress bar: bytes, rate, ETA
    manifest = json.loads((dest / "virnucpro_models.json").read_text())["models"]
    assert set(manifest) == {ESM, "DNABERT-S", "classifier-500"}
    assert manifest[ESM]["revision"] == REV
    assert manifest[ESM]["files"][f"{ESM}/model.safetensors"]["sha256"] == _sha(
        (served["esm"] / "model.safetensors").read_bytes()
    )
    for relative in (f"{ESM}/config.json", "DNABERT-S/tokenizer.json", "500_model.pth"):
        assert (dest / relative).is_file()

    listing = run_cli("models", "--dest", str(dest))
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert "present" in rows[ESM] and "ok (2 pinned, 0 recorded)" in rows[ESM]
    assert "present" in rows["DNABERT-S"] and "missing" in rows["esm2_t36_3B_UR50D"]

    # a compute node: no network, empty caches, only the folder
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "node_hf"))
    monkeypatch.setenv("VIRNUCPRO_CACHE", str(tmp_path / "node_cache"))
    from virnucpro.api import resolve_model

    monkeypatch.setenv("VIRNUCPRO_MODELS", str(dest))  # what embed resolves its --model with
    spec = resolve_model(ESM, flag="--model")
    assert spec.weights == str(dest / ESM) and spec.revision == REV and spec.name == ESM
    monkeypatch.delenv("VIRNUCPRO_MODELS")
    cpu = ["--devices", "cpu", "--workers", "1", "-q"]
    records = [(f"r{i}", "ATGC" * 200) for i in range(3)]
    reads = write_fasta(tmp_path / "reads.fna", records)
    predicted = run_cli(
        "predict", str(reads), "-o", str(tmp_path / "pred"), "--esm-model", ESM,
        "--models-dir", str(dest), *cpu,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    run = json.loads((tmp_path / "pred" / "run.json").read_text())
    assert REV in json.dumps(run["models"]) and DNA_REV in json.dumps(run["models"])

    other = run_cli(
        "embed", str(reads), "-o", str(tmp_path / "e"), "--model", "esm2_t12_35M_UR50D",
        "--models-dir", str(dest), *cpu,
    )  # fmt: skip
    assert other.returncode == 1 and "not in the models folder" in other.stderr
    assert f"virnucpro download --models esm2_t12_35M_UR50D --dest {dest}" in other.stderr
    assert "--models-dir" in other.stderr and "local copy with --model" in other.stderr

    missing = run_cli("selfcheck", str(EXAMPLE), "-o", str(tmp_path / "sc"), "--models-dir",
                      str(dest))  # fmt: skip
    assert missing.returncode == 1
    assert "not in the models folder" in missing.stderr
    assert f"virnucpro download --models esm2_t36_3B_UR50D --dest {dest}" in missing.stderr


def test_models_lists_the_cache_and_flags_damage(env, hub):
    from virnucpro import download_models
    from virnucpro.models.hub import url_cache_path

    download_models([ESM, "classifier-500"])
    names = f"{ESM},DNABERT-S,classifier-500"
    listing = run_cli("models", "--models", names)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line for line in listing.stdout.splitlines()[1:]}
    assert "present" in rows[ESM] and str(snapshot(env)) in rows[ESM]
    assert "missing" in rows["DNABERT-S"]
    assert "ok (pinned)" in rows["classifier-500"]
    with open(url_cache_path(f"{hub.url}/raw/500_model.pth"), "ab") as handle:
        handle.write(b"x")
    damaged = run_cli("models", "--models", names)
    assert damaged.returncode == 1 and "damaged" in damaged.stdout
    assert "virnucpro download --models classifier-500" in damaged.stderr
