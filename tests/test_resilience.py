"""Resilience of the engine with real processes and real signals (issue 4).

Every run is the real CLI in its own session (process group). Runs are made long enough to be
stopped at a chosen point with the test hooks (``engine/hooks.py``): a per-batch delay, or a
hang on a chosen sequence that pins the run so it cannot finish on its own. The tests wait on
files and log lines with generous timeouts and never assert on timings.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, embed_args, predict_args, protein_records, read_h5, write_fasta

EXAMPLE = REPO / "examples" / "example.fna"
ALL_IDS = [rid for rid, _ in protein_records()]
WAIT = 240.0  # generous: seconds to wait for a file or a log line, never a timing assertion


# -- processes --------------------------------------------------------------------------------
class Run(subprocess.Popen):
    """A CLI process whose stderr goes to a file (a pipe could fill up and block the run)."""

    stderr_path: Path


class Runner:
    """Starts ``python -m virnucpro`` in new sessions and kills every group left at teardown."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[Run] = []

    def start(self, *args: str, hooks: dict[str, str] | None = None) -> Run:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIRNUCPRO_TEST_")}
        env.update(hooks or {})
        log = self.folder / f"stderr-{len(self.started)}.txt"
        with open(log, "w") as stderr:
            proc = Run(
                [sys.executable, "-m", "virnucpro", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                start_new_session=True,  # its own process group: killpg reaches its workers
            )
        proc.stderr_path = log
        self.started.append(proc)
        return proc

    def finish(self, proc: Run, timeout: float = 600) -> tuple[int, str]:
        proc.wait(timeout=timeout)
        return proc.returncode, proc.stderr_path.read_text()

    def run(self, *args: str, hooks: dict[str, str] | None = None) -> tuple[int, str]:
        return self.finish(self.start(*args, hooks=hooks))

    def close(self) -> None:
        for proc in self.started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=60)


@pytest.fixture
def runner(tmp_path) -> Iterator[Runner]:
    r = Runner(tmp_path)
    yield r
    r.close()


def wait_until(check: Callable[[], bool], what: str, proc: Run | None = None) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"the run ended (exit {proc.returncode}) before {what}: "
                f"{proc.stderr_path.read_text()}"
            )
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def log_has(path: Path, text: str) -> Callable[[], bool]:
    return lambda: path.exists() and text in path.read_text()


def group_gone(proc: Run) -> bool:
    """True once no process of the run's session (parent or worker) is left."""
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return True
    return False


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def kill_group(proc: Run) -> None:
    """SIGKILL the whole process group (parent and workers) and wait until none is left."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    wait_until(lambda: group_gone(proc), "every process of the group to be gone")


# -- run directories ----------------------------------------------------------------------------


def report(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def n_committed(out: Path) -> int:
    """How many unit files are committed (cheap enough to poll while the run goes on)."""
    units = out / "work" / "units"
    return sum(not p.name.startswith(".") for p in units.glob("*.h5")) if units.exists() else 0


def committed(out: Path) -> dict[str, int]:
    """Committed unit files of a run directory: key -> number of sequences in it."""
    units = out / "work" / "units"
    if not units.exists():
        return {}
    found = {}
    for path in sorted(units.glob("*.h5")):
        if not path.name.startswith("."):  # .KEY.h5.tmp-PID: a write cut short, not committed
            with h5py.File(path, "r") as f:
                found[path.stem] = len(f["positions"]) + len(f["failed_positions"])
    return found


def tsv_ids(path: Path) -> list[str]:
    return [line.split("\t")[0] for line in path.read_text().splitlines()[1:]]


def assert_matches(out: Path, reference: tuple[list[str], np.ndarray], *, without=()) -> None:
    """The output holds every reference id but ``without``, in input order, same vectors."""
    ids, vectors = read_h5(out / "embeddings.h5")
    ref_ids, ref_vectors = reference
    assert ids == [i for i in ref_ids if i not in without]
    row = {rid: i for i, rid in enumerate(ref_ids)}
    np.testing.assert_allclose(vectors, ref_vectors[[row[i] for i in ids]], atol=1e-6, rtol=0)


def assert_resumed_without_recompute(out: Path, before: dict[str, int], expected: int) -> None:
    """The resumed run reused every unit committed before it and computed none of them again."""
    units = report(out)["units"]
    assert units["reused_files"] == len(before)
    assert set(units["computed_keys"]).isdisjoint(before)
    assert units["computed"] == units["to_compute"] == units["planned"] - len(before)
    assert units["retries"] == 0 and units["splits"] == 0
    # sequences actually embedded by this run's workers: exactly those not committed before
    assert sum(w["sequences"] for w in report(out)["workers"]) == expected - sum(before.values())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, proteins, tiny_esm_hf) -> tuple[list[str], np.ndarray, int]:
    """An uninterrupted run with the parameters of the tests: ids, vectors, units planned."""
    out = tmp_path_factory.mktemp("reference") / "out"
    r = Runner(out.parent)
    code, stderr = r.run(*embed_args(proteins, out, tiny_esm_hf))
    assert code == 0, stderr
    ids, vectors = read_h5(out / "embeddings.h5")
    assert ids == ALL_IDS
    planned = report(out)["units"]["planned"]
    assert planned >= 5
    return ids, vectors, planned


# -- SIGKILL of the whole process group, then the same command again ----------------------------
# Where the group is killed, and how the run is held there. The units are planned longest
# first, so p_long is in the first unit and p_one (1 residue) in the last one; a hang on a
# sequence pins the run: that unit can never be committed, so the kill is certainly mid-run.
KILL_POINTS = {
    "workers_starting": ({"VIRNUCPRO_TEST_HANG_ID": "p_long"}, 1, "job"),
    "after_first_unit": ({"VIRNUCPRO_TEST_DELAY": "0.5"}, 1, 1),
    "last_unit_in_flight": ({"VIRNUCPRO_TEST_HANG_ID": "p_one"}, 2, -1),
}


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_group_then_resume_embed(runner, tmp_path, proteins, tiny_esm_hf, reference, point):
    hooks, workers, wait_for = KILL_POINTS[point]
    planned = reference[2]
    out = tmp_path / "out"
    args = embed_args(proteins, out, tiny_esm_hf, workers=workers)
    proc = runner.start(*args, hooks=hooks)
    if wait_for == "job":  # index built, job recorded, workers being spawned
        wait_until(lambda: (out / "work" / "job.json").exists(), "job.json", proc)
    else:
        target = wait_for if wait_for > 0 else planned + wait_for
        wait_until(lambda: n_committed(out) >= target, f"{target} committed units", proc)
    kill_group(proc)
    before = committed(out)
    assert not (out / "embeddings.h5").exists() and len(before) < planned
    if point == "workers_starting":
        assert before == {}
    if point == "last_unit_in_flight":
        assert len(before) == planned - 1
    # what a kill during an earlier merge leaves behind: a temporary as large as the output
    stale = out / f".embeddings.h5.tmp-{dead_pid()}"
    stale.write_bytes(b"partial merge")

    code, stderr = runner.run(*args)  # the same command, without test hooks
    assert code == 0, stderr
    assert not stale.exists()
    assert_matches(out, reference[:2])
    assert_resumed_without_recompute(out, before, len(ALL_IDS))
    assert report(out)["status"] == "complete"
    assert json.loads((out / "work" / "job.json").read_text())["runs"] == 2


# -- SIGKILL of a predict run, twice, then the same command again -------------------------------

TABLES = (
    "prediction_results.txt",
    "prediction_results_highestscore.csv",
    "virnucpro_summary.tsv",
    "skipped.tsv",
    "viral.fna",
)


def read_table(path: Path) -> list[list[str]]:
    with open(path) as f:
        return list(csv.reader(f, delimiter="\t"))


def assert_tables_equal(out: Path, ref: Path) -> None:
    for name in TABLES:
        rows, expected = read_table(out / name), read_table(ref / name)
        assert len(rows) == len(expected) > 0, name
        for row, want in zip(rows, expected, strict=True):
            assert len(row) == len(want), (name, row, want)
            for got, cell in zip(row, want, strict=True):
                try:
                    assert float(got) == pytest.approx(float(cell), abs=1e-6, rel=0), (name, row)
                except ValueError:
                    assert got == cell, (name, row, want)


@pytest.fixture(scope="module")
def predict_models(tmp_path_factory) -> dict[str, Path]:
    from virnucpro.pipeline.selfcheck import write_random_models

    return write_random_models(tmp_path_factory.mktemp("predict_models"))


def test_sigkill_group_then_resume_predict(runner, tmp_path, predict_models):
    inputs = tmp_path / "example.fna"
    shutil.copy(EXAMPLE, inputs)
    ref = tmp_path / "reference"
    keep = "--keep-embeddings"  # the stages' vectors are compared below
    code, stderr = runner.run(*predict_args(inputs, ref, predict_models, keep, small_batches=True))
    assert code == 0, stderr

    out = tmp_path / "out"
    args = predict_args(inputs, out, predict_models, keep, small_batches=True)
    slow = {"VIRNUCPRO_TEST_DELAY": "0.5"}
    dna, esm = out / "stages" / "dnabert_s", out / "stages" / "esm2"

    # 1. killed in the DNABERT-S stage
    proc = runner.start(*args, hooks=slow)
    wait_until(lambda: n_committed(dna) >= 2, "2 DNABERT-S units", proc)
    kill_group(proc)
    dna_before = committed(dna)
    assert not (dna / "embeddings.h5").exists() and not esm.exists()

    # 2. the same command, killed again in the ESM-2 stage
    proc = runner.start(*args, hooks=slow)
    wait_until(lambda: n_committed(esm) >= 2, "2 ESM-2 units", proc)
    kill_group(proc)
    esm_before = committed(esm)
    assert (dna / "embeddings.h5").exists() and not (esm / "embeddings.h5").exists()
    assert not (out / "prediction_results.txt").exists()
    frames = len(read_h5(dna / "embeddings.h5")[0])
    assert_resumed_without_recompute(dna, dna_before, frames)
    dna_bytes, dna_report = (dna / "embeddings.h5").read_bytes(), (dna / "run.json").read_text()

    # 3. the same command completes; the finished stage is not touched again
    code, stderr = runner.run(*args)
    assert code == 0, stderr
    assert_resumed_without_recompute(esm, esm_before, frames)
    assert (dna / "embeddings.h5").read_bytes() == dna_bytes
    assert (dna / "run.json").read_text() == dna_report
    assert json.loads((out / "run.json").read_text())["translate_reused"] is True
    assert_tables_equal(out, ref)
    for stage in ("dnabert_s", "esm2"):
        a, b = (
            read_h5(out / "stages" / stage / "embeddings.h5"),
            read_h5(ref / "stages" / stage / "embeddings.h5"),
        )
        assert a[0] == b[0]
        np.testing.assert_allclose(a[1], b[1], atol=1e-6, rtol=0)


# -- failures of single workers -----------------------------------------------------------------
def test_worker_killed_once_is_respawned_and_retried(
    runner, tmp_path, proteins, tiny_esm_hf, reference
):
    out = tmp_path / "out"
    # one second per batch: the worker is still inside its first unit when it is killed
    proc = runner.start(
        *embed_args(proteins, out, tiny_esm_hf),
        hooks={"VIRNUCPRO_TEST_DELAY": "1"},
    )
    log = out / "logs" / "worker_0.log"
    wait_until(log_has(log, "INFO unit u000000"), "the worker's first unit", proc)
    pid = int(log.read_text().split("(pid ")[1].split(")")[0])
    os.kill(pid, signal.SIGKILL)
    code, stderr = runner.finish(proc)
    assert code == 0, stderr  # default --max-retries 3
    assert_matches(out, reference[:2])
    r = report(out)
    assert r["status"] == "complete" and r["failed_ranks"] == []
    assert r["respawns"] == 1 and r["units"]["retries"] == 1 and r["units"]["splits"] == 0
    assert r["workers"][0]["respawns"] == 1
    assert r["workers"][0]["deaths"] == ["worker 0 (cpu) killed by SIGKILL"]
    assert r["units"]["computed"] == r["units"]["planned"]
    assert log.read_text().count("INFO worker 0 started") == 2


def test_poison_sequence_is_isolated_and_not_retried_on_resume(
    runner, tmp_path, proteins, tiny_esm_hf, reference
):
    out = tmp_path / "out"
    # small units: p007 shares its unit with others, so isolating it takes splits
    args = embed_args(proteins, out, tiny_esm_hf, "--max-retries", "1", workers=2, unit_tokens=100)
    poison = {"VIRNUCPRO_TEST_CRASH_ID": "p007"}  # kills its worker every time
    code, stderr = runner.run(*args, hooks=poison)
    assert code == 2, stderr
    assert "1 failed" in stderr and "failed.tsv" in stderr
    assert tsv_ids(out / "failed.tsv") == ["p007"]
    assert "killed by SIGKILL" in (out / "failed.tsv").read_text()
    assert not (out / "missing.tsv").exists()
    assert_matches(out, reference[:2], without={"p007"})
    r = report(out)
    assert r["status"] == "partial" and r["failed_ranks"] == []
    assert r["counts"]["failed"] == 1 and r["counts"]["embedded"] == len(ALL_IDS) - 1
    assert r["units"]["splits"] >= 1 and r["units"]["retries"] >= 1
    (failed_key,) = r["units"]["failed_keys"]
    assert "." in failed_key  # a half of a half...: the unit was split down to p007
    assert committed(out)[f"{failed_key}-failed"] == 1  # persisted as a failure record

    # the same command again, poison still active: p007 is not tried again
    code, stderr = runner.run(*args, hooks=poison)
    assert code == 2, stderr
    assert tsv_ids(out / "failed.tsv") == ["p007"]
    assert_matches(out, reference[:2], without={"p007"})
    r = report(out)
    assert r["units"]["to_compute"] == 0 and r["units"]["computed"] == 0
    assert r["workers"] == [] and r["respawns"] == 0  # no worker was even started


def test_hung_worker_is_killed_after_timeout(runner, tmp_path, proteins, tiny_esm_hf, reference):
    out = tmp_path / "out"
    # tiny units: p007 is alone in its unit. The hook hangs EVERY time, so each retry hangs
    # too and p007 ends isolated in failed.tsv: exit 2 with everything else embedded.
    args = embed_args(
        proteins,
        out,
        tiny_esm_hf,
        "--max-retries",
        "1",
        "--worker-timeout",
        "5",
        workers=2,
        unit_tokens=30,
    )
    code, stderr = runner.run(*args, hooks={"VIRNUCPRO_TEST_HANG_ID": "p007"})
    assert code == 2, stderr
    assert tsv_ids(out / "failed.tsv") == ["p007"]
    assert "no heartbeat for 5 s (hung)" in (out / "failed.tsv").read_text()
    assert_matches(out, reference[:2], without={"p007"})
    r = report(out)
    deaths = [d for w in r["workers"] for d in w["deaths"]]
    assert len(deaths) == 2  # the first try and its one retry
    assert all("killed by SIGKILL: no heartbeat for 5 s (hung)" in d for d in deaths)
    assert r["units"]["retries"] == 1 and r["respawns"] == 2
    run_log = (out / "logs" / "run.log").read_text()
    assert run_log.count("sent no heartbeat for 5 s; killing it") == 2


def test_out_of_memory_splits_the_batch(runner, tmp_path, proteins, tiny_esm_hf, reference):
    out = tmp_path / "out"
    # p017 (5 residues) is in the last unit, whose batches hold many short sequences
    code, stderr = runner.run(
        *embed_args(proteins, out, tiny_esm_hf),
        hooks={"VIRNUCPRO_TEST_OOM_ID": "p017"},
    )
    assert code == 2, stderr
    assert tsv_ids(out / "failed.tsv") == ["p017"]
    assert "out of memory on a batch of this sequence alone" in (out / "failed.tsv").read_text()
    assert_matches(out, reference[:2], without={"p017"})
    r = report(out)
    assert r["oom_splits"] > 0 and r["workers"][0]["oom_splits"] == r["oom_splits"]
    assert r["respawns"] == 0 and r["units"]["retries"] == 0  # handled inside the worker
    assert r["units"]["computed"] == r["units"]["planned"]


def test_slow_worker_receives_fewer_units(runner, tmp_path, proteins, tiny_esm_hf, reference):
    out = tmp_path / "out"
    args = embed_args(proteins, out, tiny_esm_hf, workers=2, unit_tokens=60)
    code, stderr = runner.run(*args, hooks={"VIRNUCPRO_TEST_DELAY": "1=1.0"})  # rank 1 is slow
    assert code == 0, stderr
    assert_matches(out, reference[:2])
    r = report(out)
    fast, slow = r["workers"]
    assert r["units"]["planned"] >= 20
    assert fast["units"] + slow["units"] == r["units"]["planned"]
    assert fast["units"] > slow["units"]


# -- a different job on resume ------------------------------------------------------------------
def snapshot(out: Path) -> dict[str, bytes]:
    """Every result and state file (logs are appended to, the index is a cache, and the lock
    file a killed run left is taken over and removed by the next run: engine/claim.py)."""
    skip = (out / "logs", out / "work" / "index", out / ".virnucpro.lock")
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and not any(p.is_relative_to(s) for s in skip)
    }


@pytest.mark.parametrize("change", ["input", "model"])
def test_changed_job_on_resume_is_refused(runner, tmp_path, tiny_esm_hf, change):
    inputs = write_fasta(tmp_path / "in.fa", protein_records())
    model = tmp_path / "model"
    shutil.copytree(tiny_esm_hf, model)
    out = tmp_path / "out"
    args = embed_args(inputs, out, model)
    proc = runner.start(*args, hooks={"VIRNUCPRO_TEST_HANG_ID": "p_one"})  # pinned in the last unit
    wait_until(lambda: n_committed(out) >= 1, "a committed unit", proc)
    kill_group(proc)
    before = snapshot(out)
    assert any(name.startswith("work/units/") for name in before)

    if change == "input":
        with open(inputs, "a") as f:
            f.write(">p_new added later\nMKVLA\n")
        expected = "the input files changed"
    else:
        from virnucpro.models.tiny import write_tiny_esm2_hf

        shutil.rmtree(model)
        write_tiny_esm2_hf(model, seed=1)  # same folder, other weights
        expected = "the model changed (checksum)"
    code, stderr = runner.run(*args)
    assert code == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert expected in lines[0] and "--restart" in lines[0] and str(out) in lines[0]
    assert snapshot(out) == before  # nothing overwritten


# -- SIGINT / SIGTERM to the parent only ---------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_parent_stops_gracefully_and_resumes(
    runner, tmp_path, proteins, tiny_esm_hf, reference, signum
):
    out = tmp_path / "out"
    args = embed_args(proteins, out, tiny_esm_hf)
    proc = runner.start(*args, hooks={"VIRNUCPRO_TEST_DELAY": "0.5"})
    wait_until(lambda: n_committed(out) >= 1, "a committed unit", proc)
    os.kill(proc.pid, signum)  # the parent only, not the group
    code, stderr = runner.finish(proc)
    name = signal.Signals(signum).name
    assert code == 128 + signum, stderr
    assert f"interrupted by {name}" in stderr and "Run the same command again to resume" in stderr
    run_log = (out / "logs" / "run.log").read_text()
    assert f"{name} received: workers stop at the next batch boundary" in run_log
    worker_log = (out / "logs" / "worker_0.log").read_text()
    assert "INFO worker 0 stopped" in worker_log  # it stopped by itself: nothing was killed
    r = report(out)
    assert r["status"] == "interrupted" and r["workers"][0]["deaths"] == []
    before = committed(out)
    # exactly the units the worker finished are committed; the one in flight is not
    assert set(before) == set(r["units"]["computed_keys"])
    assert {
        line.split("unit ")[1].split(" ")[0]
        for line in worker_log.splitlines()
        if " committed: " in line
    } == set(before)
    assert 1 <= len(before) < reference[2] and not (out / "embeddings.h5").exists()

    code, stderr = runner.run(*args)
    assert code == 0, stderr
    assert_matches(out, reference[:2])
    assert_resumed_without_recompute(out, before, len(ALL_IDS))


def test_second_signal_stops_at_once(runner, tmp_path, proteins, tiny_esm_hf, reference):
    out = tmp_path / "out"
    # the worker hangs in the last unit and no timeout applies: it never reaches a batch
    # boundary, so only the second signal can end the run
    args = embed_args(proteins, out, tiny_esm_hf, "--worker-timeout", "0")
    proc = runner.start(*args, hooks={"VIRNUCPRO_TEST_HANG_ID": "p_one"})
    wait_until(
        log_has(out / "logs" / "worker_0.log", "VIRNUCPRO_TEST_HANG_ID: hanging on p_one"),
        "the worker to hang",
        proc,
    )
    os.kill(proc.pid, signal.SIGINT)
    wait_until(log_has(out / "logs" / "run.log", "SIGINT received"), "the first signal", proc)
    assert proc.poll() is None  # the graceful stop waits for the hung worker
    os.kill(proc.pid, signal.SIGINT)
    code, stderr = runner.finish(proc, timeout=WAIT)
    assert code == 130, stderr
    assert "interrupted by SIGINT" in stderr and "Run the same command again to resume" in stderr
    wait_until(lambda: group_gone(proc), "the hung worker to be killed")
    assert report(out)["status"] == "interrupted"
    assert len(committed(out)) == reference[2] - 1  # committed work is kept
    assert not (out / "embeddings.h5").exists()
