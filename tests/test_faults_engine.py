"""The engine's stores cannot lie (issue 11, items 3, 4, 5, 6, 9, 10).

Real CLI processes in their own sessions, real files damaged byte by byte, real SIGKILL and
SIGSTOP, a real tmpfs (when running as root). Every test first builds the fault the issue
describes, then checks the output against a clean run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import embed_args, protein_records
from test_resilience import (
    Runner,
    assert_matches,
    committed,
    kill_group,
    log_has,
    n_committed,
    report,
    wait_until,
)

ALL_IDS = [rid for rid, _ in protein_records()]


@pytest.fixture
def runner(tmp_path) -> Iterator[Runner]:
    r = Runner(tmp_path)
    yield r
    r.close()


def read_out(path: Path) -> dict[str, np.ndarray | list[str]]:
    with h5py.File(path, "r") as f:
        data: dict = {"ids": [s.decode() for s in f["ids"][()]]}
        for name in ("embeddings", "per_token", "per_token_offsets", "lengths", "truncated"):
            if name in f:
                data[name] = f[name][()]
    return data


def assert_same_output(out: Path, ref: dict, *, atol: float = 1e-6) -> None:
    got = read_out(out / "embeddings.h5")
    assert got["ids"] == ref["ids"] == ALL_IDS
    assert set(got) == set(ref)
    for name in ref:
        if name == "ids":
            continue
        if got[name].dtype.kind == "f":
            np.testing.assert_allclose(got[name], ref[name], atol=atol, rtol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, proteins, tiny_esm_hf) -> tuple[list[str], np.ndarray]:
    """A clean run with the test plan of ``embed_args``: (ids, vectors)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    r = Runner(out.parent)
    try:
        code, stderr = r.run(*embed_args(proteins, out, tiny_esm_hf))
    finally:
        r.close()
    assert code == 0, stderr
    data = read_out(out / "embeddings.h5")
    return data["ids"], data["embeddings"]


@pytest.fixture(scope="module")
def per_token_reference(tmp_path_factory, proteins, tiny_esm_hf) -> dict:
    """A clean --per-token run with small units (many unit files to damage)."""
    out = tmp_path_factory.mktemp("ref_per_token") / "out"
    r = Runner(out.parent)
    try:
        code, stderr = r.run(
            *embed_args(proteins, out, tiny_esm_hf, "--per-token", unit_tokens=300)
        )
    finally:
        r.close()
    assert code == 0, stderr
    data = read_out(out / "embeddings.h5")
    data["planned"] = report(out)["units"]["planned"]
    return data


# -- item 3: every dataset of a unit file is checksummed; bad files are quarantined -----------
def flip(path: Path, dataset: str, *, xor: int = 0xFF, at: int = 0) -> None:
    """Change one byte of ``dataset``'s raw data in the file (as a disk or a tool might)."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_offset()
        assert offset is not None, dataset
    with open(path, "r+b") as fh:
        fh.seek(offset + at)
        byte = fh.read(1)[0]
        fh.seek(offset + at)
        fh.write(bytes([byte ^ xor]))


def test_damaged_units_are_quarantined_and_recomputed(
    runner, tmp_path, proteins, tiny_esm_hf, per_token_reference
):
    ref = {k: v for k, v in per_token_reference.items() if k != "planned"}
    planned = per_token_reference["planned"]
    assert planned >= 8
    out = tmp_path / "out"
    args = embed_args(proteins, out, tiny_esm_hf, "--per-token", unit_tokens=300)
    proc = runner.start(*args, hooks={"VIRNUCPRO_TEST_HANG_ID": "p_one"})  # the last unit hangs
    wait_until(lambda: n_committed(out) >= planned - 1, "all units but the last", proc)
    kill_group(proc)
    units = sorted(p for p in (out / "work" / "units").glob("*.h5") if not p.name.startswith("."))
    assert len(units) == planned - 1
    with h5py.File(units[2], "r") as f:
        assert not f["truncated"][()].any()  # setting a flag below is a real change
    damage = {
        units[0].name: lambda p: flip(p, "vectors/embeddings", at=5),
        units[1].name: lambda p: flip(p, "per_token", at=11),
        units[2].name: lambda p: flip(p, "truncated", xor=0x01),
        units[3].name: lambda p: flip(p, "lengths", xor=0x01),
        units[4].name: lambda p: os.truncate(p, p.stat().st_size // 2),
        units[5].name: foreign,
    }
    sizes = committed(out)
    for name, spoil in damage.items():
        spoil(out / "work" / "units" / name)
    sequences_damaged = sum(sizes[Path(name).stem] for name in damage)

    code, stderr = runner.run(*args)
    assert code == 0, stderr
    assert_same_output(out, ref)
    r = report(out)
    quarantined = {q["file"]: q["reason"] for q in r["units"]["quarantined"]}
    assert set(quarantined) == set(damage)
    assert "checksum" in quarantined[units[0].name]
    assert "unreadable or incomplete" in quarantined[units[4].name]
    assert quarantined[units[5].name] == "it was computed for another job"
    assert sorted(p.name for p in (out / "work" / "quarantine").iterdir()) == sorted(damage)
    assert r["units"]["reused_files"] == planned - 1 - len(damage)
    computed = sum(w["sequences"] for w in r["workers"])
    last = len(ALL_IDS) - sum(sizes.values())
    assert computed == sequences_damaged + last  # the damaged units and the last one, again
    assert r["units"]["retries"] == 0 and r["respawns"] == 0


def foreign(path: Path) -> None:
    """Rewrite a unit as another job would have written it (valid checksum, other job tag)."""
    from virnucpro.engine.unitfile import read_unit, write_unit

    unit = read_unit(path)
    path.unlink()
    write_unit(path.parent, unit, job="another-job")


# -- item 6: resume under another plan ---------------------------------------------------------
def plan_args(inputs: Path, out: Path, model: Path, tokens_per_batch: int) -> list[str]:
    """embed with the default --unit-tokens, which follows --tokens-per-batch."""
    args = embed_args(inputs, out, model)
    at = args.index("--unit-tokens")
    del args[at : at + 2]
    args[args.index("--tokens-per-batch") + 1] = str(tokens_per_batch)
    return args


def test_resume_with_doubled_tokens_per_batch_after_sigkill(
    runner, tmp_path, proteins, tiny_esm_hf, reference
):
    out = tmp_path / "out"
    proc = runner.start(
        *plan_args(proteins, out, tiny_esm_hf, 256), hooks={"VIRNUCPRO_TEST_DELAY": "0.3"}
    )
    # six units of about 312 tokens (of 16): the new plan's first fresh units (512 tokens
    # each) then have the numbers of committed files, which the old keys reused
    wait_until(lambda: n_committed(out) >= 6, "six committed units", proc)
    kill_group(proc)  # real SIGKILL of parent and worker, mid-run
    before = committed(out)
    first_plan = int(re.search(r"(\d+) units \(", (out / "logs" / "run.log").read_text())[1])

    code, stderr = runner.run(*plan_args(proteins, out, tiny_esm_hf, 512))
    assert code == 0, stderr  # the FIRST attempt completes
    r = report(out)
    assert r["status"] == "complete" and r["parameters"]["tokens_per_batch"] == 512
    assert len(before) < first_plan and r["units"]["planned"] < first_plan  # another plan
    assert r["units"]["reused_files"] == len(before)
    assert set(r["units"]["computed_keys"]).isdisjoint(before)  # no old file name reused
    assert sum(w["sequences"] for w in r["workers"]) == len(ALL_IDS) - sum(before.values())
    assert json.loads((out / "work" / "job.json").read_text())["runs"] == 2
    # other batches, same numbers: fp32 on CPU, exact attention over each packed sequence
    assert_matches(out, reference)


# -- items 4 and 5: the index cache is verified; job identity is the content ------------------
def interrupted_run(runner: Runner, args: list[str], out: Path) -> dict[str, int]:
    """Start a run whose last unit hangs, SIGKILL it once a unit is committed."""
    proc = runner.start(*args, hooks={"VIRNUCPRO_TEST_HANG_ID": "p_one"})
    wait_until(lambda: n_committed(out) >= 2, "two committed units", proc)
    kill_group(proc)
    return committed(out)


def replace_byte(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    at = data.index(old)
    path.write_bytes(data[:at] + new + data[at + len(new) :])


def test_damaged_index_cache_is_rebuilt(runner, tmp_path, proteins, tiny_esm_hf, reference):
    out = tmp_path / "out"
    args = embed_args(proteins, out, tiny_esm_hf)
    before = interrupted_run(runner, args, out)
    store = out / "work" / "index" / "sequence_index"
    replace_byte(store / "ids.bin", b"p_long\n", b"p_lonG\n")  # same sizes: only content lies
    data = (store / "sequences.bin").read_bytes()
    (store / "sequences.bin").write_bytes(data.translate(bytes.maketrans(b"AC", b"CA")))

    code, stderr = runner.run(*args)
    assert code == 0, stderr
    assert_matches(out, reference)  # right ids, right vectors
    r = report(out)
    assert r["inputs"]["reused"] is False  # rebuilt from the inputs
    assert r["units"]["reused_files"] == len(before)  # same content: the job resumes


def test_touch_and_relative_model_path_resume_reusing_every_unit(
    runner, tmp_path, proteins, tiny_esm_hf, reference
):
    inputs = tmp_path / "in.fa"
    shutil.copy(proteins, inputs)
    out = tmp_path / "out"
    before = interrupted_run(runner, embed_args(inputs, out, tiny_esm_hf.resolve()), out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "work" / "units").glob("*.h5")}
    st = inputs.stat()
    os.utime(inputs, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))  # touch
    relative = Path(os.path.relpath(tiny_esm_hf.resolve(), Path.cwd()))
    assert not relative.is_absolute()

    code, stderr = runner.run(*embed_args(inputs, out, relative))
    assert code == 0, stderr
    assert_matches(out, reference)
    r = report(out)
    assert r["inputs"]["reused"] is True  # the index too: same content
    assert r["units"]["reused_files"] == len(before) and r["units"]["retries"] == 0
    assert set(r["units"]["computed_keys"]).isdisjoint(before)
    assert sum(w["sequences"] for w in r["workers"]) == len(ALL_IDS) - sum(before.values())
    assert mtimes  # the committed unit files were read, never rewritten, before the merge
    assert json.loads((out / "work" / "job.json").read_text())["runs"] == 2


# -- item 10: a worker that stops while starting is timed out ----------------------------------
def test_worker_stopped_during_model_load_is_timed_out(
    runner, tmp_path, proteins, tiny_esm_hf, reference
):
    out = tmp_path / "out"
    hooks = {"VIRNUCPRO_TEST_LOAD_DELAY": "2", "VIRNUCPRO_STARTUP_TIMEOUT": "20"}
    proc = runner.start(*embed_args(proteins, out, tiny_esm_hf), hooks=hooks)
    worker_log = out / "logs" / "worker_0.log"
    wait_until(log_has(worker_log, "VIRNUCPRO_TEST_LOAD_DELAY: loading the model"), "load", proc)
    pid = int(re.search(r"loading the model \(pid (\d+)\)", worker_log.read_text()).group(1))
    os.kill(pid, signal.SIGSTOP)  # a real stop, in the middle of the model load

    code, stderr = runner.finish(proc)
    assert code == 0, stderr
    assert_matches(out, reference)
    r = report(out)
    [death] = r["workers"][0]["deaths"]
    assert "killed by SIGKILL: no heartbeat for 20 s while starting (import or model load)" in death
    assert r["respawns"] == 1 and r["units"]["retries"] == 0


# -- item 9: full and read-only disks ------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A 256 kB tmpfs mounted for the test (root only; skipped with the reason otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (this test runs as an ordinary user)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def remount(disk: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(disk)], check=True)


def one_line_error(code: int, stderr: str, *needles: str) -> None:
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    for needle in needles:
        assert needle in lines[0], (needle, stderr)


def test_full_and_read_only_disks(
    runner, tmp_path, small_disk, proteins, tiny_esm_hf, per_token_reference
):
    ref = {k: v for k, v in per_token_reference.items() if k != "planned"}
    out = small_disk / "out"
    args = embed_args(proteins, out, tiny_esm_hf, "--per-token", unit_tokens=300)

    remount(small_disk, "ro")
    code, stderr = runner.run(*args)
    one_line_error(code, stderr, "read-only file system: cannot write", str(out))
    remount(small_disk, "rw")

    # 256 kB: the index and the first unit fit, the second unit does not (the worker's write)
    code, stderr = runner.run(*args)
    units = out / "work" / "units"
    one_line_error(code, stderr, "no space left on device", str(units), "needs about", "free")
    assert (out / "logs" / "run.log").read_text().count("started on cpu") == 1  # no respawn
    assert n_committed(out) >= 1  # committed work is kept
    assert not list(units.glob(".*tmp*"))  # nothing half-written left to fill the disk

    # enough room for the units, not for the merge: one line with the size it needs
    remount(small_disk, "size=64m")
    code, stderr = runner.run(*args, "--shard", "0/1")
    assert code == 0, stderr
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, shutil.disk_usage(small_disk).free - 300_000)
    code, stderr = runner.run("merge", str(out), "--quiet")
    one_line_error(code, stderr, "no space left on device", "embeddings.h5", "needs about")
    assert not list(out.glob(".embeddings.h5.tmp-*"))

    filler.unlink()
    code, stderr = runner.run(*args)  # the same command, after freeing space
    assert code == 0, stderr
    assert_same_output(out, ref)
