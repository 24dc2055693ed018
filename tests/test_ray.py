"""The Ray backend end to end: a real local Ray cluster, real actors, real kills.

Every Ray process a test starts carries a marker in its environment, so teardown finds (and
checks for) exactly those processes and nothing else on the machine. Ray's temporary files
stay under the test's own directory.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import embed_args, protein_records, read_h5, run_cli

MARK = "VIRNUCPRO_RAY_TEST_MARK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def marked_pids(mark: str) -> list[int]:
    """Live processes whose environment carries ``MARK=mark`` (the ones a test started)."""
    needle = f"{MARK}={mark}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def kill_marked(mark: str, wait: float = 15) -> list[int]:
    """Wait for marked processes to exit; SIGKILL (by pid) and return those that did not."""
    deadline = time.time() + wait
    while (left := marked_pids(mark)) and time.time() < deadline:
        time.sleep(0.2)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def ray_env(mark: str, **extra: str) -> dict:
    return {MARK: mark, "RAY_USAGE_STATS_ENABLED": "0", **extra}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A private one-node Ray cluster (``ray start --head --block``), stopped at the end."""
    pytest.importorskip("ray")
    temp = tmp_path_factory.mktemp("ray")
    mark = secrets.token_hex(8)
    port = free_port()
    env = ray_env(
        mark,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(16),
        VIRNUCPRO_RAY_TMPDIR=str(temp),
    )
    log = open(temp / "ray_start.log", "w")
    command = (
        f"start --head --block --num-cpus 4 --temp-dir {temp} --port {port} "
        f"--ray-client-server-port {free_port()} --dashboard-port {free_port()} "
        f"--dashboard-agent-listen-port {free_port()} --metrics-export-port {free_port()} "
        "--include-dashboard=false --object-store-memory 100000000"
    ).split()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", *command],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
        start_new_session=True,
    )
    try:
        deadline = time.time() + 90
        while "Ray runtime started" not in (temp / "ray_start.log").read_text():
            assert proc.poll() is None, (temp / "ray_start.log").read_text()
            assert time.time() < deadline, "ray start did not come up in 90 s"
            time.sleep(0.2)
        yield {"address": f"127.0.0.1:{port}", "env": env, "temp": temp}
    finally:
        proc.send_signal(signal.SIGTERM)  # --block stops every process it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        strays = kill_marked(mark)
        assert not strays, f"Ray processes left running: {strays}"


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, proteins, tiny_esm_hf) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    result = run_cli(*embed_args(proteins, out, tiny_esm_hf, workers=2))
    assert result.returncode == 0, result.stderr
    return out


def assert_same_output(out: Path, reference: Path) -> None:
    ids, vectors = read_h5(out / "embeddings.h5")
    ref_ids, ref = read_h5(reference / "embeddings.h5")
    assert ids == ref_ids == [rid for rid, _ in protein_records()]
    np.testing.assert_allclose(vectors, ref, atol=1e-6, rtol=0)


def ray_cli(cluster: dict, *args: str, env: dict | None = None):
    return run_cli(
        *args,
        "--backend",
        "ray",
        "--ray-address",
        cluster["address"],
        env={**cluster["env"], **(env or {})},
    )


def test_missing_ray_names_the_extra(monkeypatch):
    from virnucpro.engine.job import EngineOptions, make_backend
    from virnucpro.errors import VirnucproError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(VirnucproError, match=r"pip install 'virnucpro\[ray\]'") as err:
        make_backend(EngineOptions(devices=["cpu"], backend="ray"), lambda *_: None)
    assert "\n" not in str(err.value)


def test_ray_output_equals_local(ray_cluster, local_run, tmp_path, proteins, tiny_esm_hf):
    out = tmp_path / "ray"
    result = ray_cli(ray_cluster, *embed_args(proteins, out, tiny_esm_hf, workers=2))
    assert result.returncode == 0, result.stderr
    assert_same_output(out, local_run)
    report = json.loads((out / "run.json").read_text())
    assert report["parameters"]["backend"] == "ray"
    assert sum(w["units"] for w in report["workers"]) == report["units"]["planned"]
    assert report["counts"]["embedded"] == len(protein_records())
    # Whichever actor was ready first may have done every unit of this small job before the
    # other started; each actor that ran logs to its own file.
    logs = sorted((out / "logs").glob("worker_*.log"))
    assert logs and all("(Ray actor)" in log.read_text() for log in logs)


def _actor_pid_once_busy(log: Path, timeout: float = 120) -> int:
    """The pid of an actor once it holds a unit (its per-batch delay keeps it busy)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.exists() and "INFO unit " in (content := log.read_text()):
            return int(content.split("(pid ")[1].split(")")[0])
        time.sleep(0.1)
    raise AssertionError(f"no unit started in {log}")


def test_killed_actor_is_replaced_and_output_complete(
    ray_cluster, local_run, tmp_path, proteins, tiny_esm_hf
):
    out = tmp_path / "killed"
    env = {**os.environ, **ray_cluster["env"], "VIRNUCPRO_TEST_DELAY": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "virnucpro",
            *embed_args(proteins, out, tiny_esm_hf, workers=2),
            "--max-retries",
            "3",
            "--backend",
            "ray",
            "--ray-address",
            ray_cluster["address"],
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        os.kill(_actor_pid_once_busy(out / "logs" / "worker_1.log"), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert_same_output(out, local_run)
    report = json.loads((out / "run.json").read_text())
    worker = report["workers"][1]
    assert worker["respawns"] == 1 and len(worker["deaths"]) == 1
    assert "Ray actor died" in worker["deaths"][0]
    assert report["units"]["retries"] == 1 and not report["failed_ranks"]
    assert not (out / "missing.tsv").exists()


def test_hung_actor_is_killed_and_rank_failed(
    ray_cluster, local_run, tmp_path, proteins, tiny_esm_hf
):
    out = tmp_path / "hung"
    result = ray_cli(
        ray_cluster,
        *embed_args(proteins, out, tiny_esm_hf, workers=2),
        "--max-retries",
        "0",
        "--worker-timeout",
        "3",
        env={"VIRNUCPRO_TEST_HANG_ID": "p007"},
    )
    assert result.returncode == 2, result.stderr
    ids, vectors = read_h5(out / "embeddings.h5")
    missing = [line.split("\t")[0] for line in (out / "missing.tsv").read_text().splitlines()[1:]]
    assert "p007" in missing and set(missing).isdisjoint(ids)
    assert sorted(ids + missing) == sorted(rid for rid, _ in protein_records())
    ref_ids, ref = read_h5(local_run / "embeddings.h5")
    row = {rid: i for i, rid in enumerate(ref_ids)}
    np.testing.assert_allclose(vectors, ref[[row[i] for i in ids]], atol=1e-6, rtol=0)
    report = json.loads((out / "run.json").read_text())
    assert len(report["failed_ranks"]) == 1
    deaths = report["workers"][report["failed_ranks"][0]]["deaths"]
    assert len(deaths) == 1 and "hung" in deaths[0]


def test_unreachable_cluster_is_a_one_line_error(tmp_path, proteins, tiny_esm_hf):
    pytest.importorskip("ray")
    out = tmp_path / "nowhere"
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli(
        *embed_args(proteins, out, tiny_esm_hf, workers=2),
        "--backend",
        "ray",
        "--ray-address",
        address,
        timeout=120,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and address in errors[0] and "Traceback" not in result.stderr


def test_cluster_devices_counts_cluster_gpus(ray_cluster):
    code = (
        "from virnucpro.engine.ray_session import cluster_devices; "
        f"print(cluster_devices({ray_cluster['address']!r}, workers=3))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **ray_cluster["env"]},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "['cpu', 'cpu', 'cpu']"  # no GPU here


def test_private_ray_instance_is_contained(local_run, tmp_path_factory, proteins, tiny_esm_hf):
    """Without --ray-address the backend starts its own Ray, under VIRNUCPRO_RAY_TMPDIR only."""
    pytest.importorskip("ray")
    mark = secrets.token_hex(8)
    tmp_path = tmp_path_factory.mktemp("r")  # short: Ray's socket paths must fit 107 bytes
    home = tmp_path / "home"
    home.mkdir()
    temp = tmp_path / "rt"
    unset = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(ray_env(mark, VIRNUCPRO_RAY_TMPDIR=str(temp), HOME=str(home)))
    out = tmp_path / "private"
    try:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "virnucpro",
                *embed_args(proteins, out, tiny_esm_hf, workers=2),
                "--backend",
                "ray",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    finally:
        strays = kill_marked(mark)
    assert result.returncode == 0, result.stderr
    assert not strays, f"Ray processes left running after the run: {strays}"
    assert_same_output(out, local_run)
    assert any(p.name.startswith("session_") for p in temp.iterdir())
    assert list(home.iterdir()) == []  # no ~/.ray/auth_token or other files in HOME


def _wait_text(paths: list[Path], text: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not any(p.exists() and text in p.read_text() for p in paths):
        assert time.time() < deadline, f"{text!r} never appeared in {paths}"
        time.sleep(0.1)


def test_sigint_stops_at_unit_boundary_then_resumes(
    ray_cluster, local_run, tmp_path, proteins, tiny_esm_hf
):
    out = tmp_path / "interrupted"
    args = [
        *embed_args(proteins, out, tiny_esm_hf, workers=2),
        "--backend",
        "ray",
        "--ray-address",
        ray_cluster["address"],
    ]
    env = {**os.environ, **ray_cluster["env"], "VIRNUCPRO_TEST_DELAY": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "virnucpro", *args], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        logs = [out / "logs" / f"worker_{rank}.log" for rank in (0, 1)]
        _wait_text(logs, " committed")  # at least one unit is kept
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert "interrupted by SIGINT" in stderr
    assert json.loads((out / "run.json").read_text())["status"] == "interrupted"
    committed = len(list((out / "work" / "units").glob("*.h5")))
    result = ray_cli(ray_cluster, *embed_args(proteins, out, tiny_esm_hf, workers=2))
    assert result.returncode == 0, result.stderr
    assert_same_output(out, local_run)
    report = json.loads((out / "run.json").read_text())
    assert report["units"]["reused_files"] == committed
    assert report["units"]["computed"] + committed == report["units"]["planned"]
