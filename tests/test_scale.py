"""Scale (issue 15): bounded parent memory, bounded disk, commands that do not import torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import write_fasta

# Runs the CLI in a process where importing torch raises (a sys.meta_path finder).
_NO_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this process")
        return None

sys.meta_path.insert(0, NoTorch())
from virnucpro import cli

try:
    code = cli.main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("torch loaded:", "torch" in sys.modules)
sys.exit(code)
"""


def _without_torch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _NO_TORCH, *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )


def test_commands_that_do_not_compute_never_import_torch(tmp_path: Path) -> None:
    reads = write_fasta(tmp_path / "reads.fa", [("r1", "ATGAAACCCGGGTTTTAAGC" * 40), ("r2", "")])
    done = _without_torch(
        "translate", str(reads), "-o", str(tmp_path / "tr"), "--chunk-size", "300"
    )
    assert done.returncode == 0, done.stderr
    assert "torch loaded: False" in done.stdout
    assert (tmp_path / "tr" / "reads_chunked300.fa").stat().st_size > 0
    for args, code in (
        (["--version"], 0),
        (["--help"], 0),
        (["translate", "--help"], 0),
        (["merge", str(tmp_path / "nothing")], 1),  # an error path still loads the command
        (["report", str(tmp_path / "tr")], 1),
        (["make-dataset", "--help"], 0),
    ):
        done = _without_torch(*args)
        assert done.returncode == code, (args, done.stderr)
        assert "torch loaded: False" in done.stdout, args
        assert "Traceback" not in done.stderr, args


def _write_units(index, units_dir: Path, per_unit: int, dim: int, seed: int = 0) -> int:
    """Unit files over ``index`` in the real format (random vectors), as workers write them."""
    import numpy as np

    from virnucpro.engine.unitfile import UnitResult, write_unit

    rng = np.random.default_rng(seed)
    units_dir.mkdir(parents=True, exist_ok=True)
    order = np.asarray(index.order)
    count = 0
    for number, start in enumerate(range(0, order.size, per_unit)):
        positions = order[start : start + per_unit].astype(np.int64)
        write_unit(
            units_dir,
            UnitResult(
                key=f"u{number:05d}",
                positions=positions,
                ids=[index.ids[p] for p in positions.tolist()],
                lengths=np.asarray(index.lengths[positions], np.int64),
                truncated=np.zeros(positions.size, bool),
                vectors={"embeddings": rng.standard_normal((positions.size, dim), np.float32)},
            ),
        )
        count += 1
    return count


def _tiny_proteins(path: Path, n: int) -> Path:
    residues = "ACDEFGHIKLMNPQRSTVWY"
    with open(path, "w") as f:
        for i in range(n):
            length = 3 + i % 17
            f.write(f">seq{i:07d}\n{(residues[i % 20 :] + residues)[:length]}\n")
    return path


MERGE_BUDGET = 8 << 20  # bytes traced at the peak of a 200,000-sequence merge


def test_merge_and_validation_hold_no_per_sequence_python_objects(tmp_path: Path) -> None:
    """200,000 sequences in 20 unit files, merged in-process under tracemalloc.

    Per-sequence state is numpy arrays (about 16 bytes per sequence: the rows' positions and
    the id hashes of the duplicate check); a list of 200,000 ids alone would take about
    13 MB, over the budget (the earlier merge peaked at 41 MB here)."""
    import tracemalloc

    import h5py
    import numpy as np

    from virnucpro.engine.merge import merge_units
    from virnucpro.io.index import build_or_load

    n = 200_000
    index = build_or_load([_tiny_proteins(tmp_path / "in.fa", n)], tmp_path / "index")
    assert _write_units(index, tmp_path / "units", 10_000, 8) == 20
    units = sorted((tmp_path / "units").glob("*.h5"))
    out = tmp_path / "embeddings.h5"
    tracemalloc.start()
    try:
        result = merge_units(index, units, out, outputs=["embeddings"], dim=8, per_token=False,
                             attrs={}, consume=tmp_path / "merge")  # fmt: skip
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.count == n
    assert peak < MERGE_BUDGET, f"merge peak {peak / 2**20:.1f} MiB"
    assert not list((tmp_path / "units").glob("*.h5"))  # consumed as merged
    with h5py.File(out) as f:
        assert f["ids"].asstr()[0] == "seq0000000" and f["ids"].asstr()[-1] == f"seq{n - 1:07d}"
        assert np.isfinite(f["embeddings"][-5:]).all()


def _read(path: Path):
    import h5py

    with h5py.File(path) as f:
        return f["ids"].asstr()[()].tolist(), f["embeddings"][()], f["truncated"][()]


def test_complete_run_leaves_no_units_and_no_index(tmp_path, proteins, tiny_esm_hf) -> None:
    import json

    from conftest import embed_args, run_cli

    out = tmp_path / "out"
    done = run_cli(*embed_args(proteins, out, tiny_esm_hf))
    assert done.returncode == 0, done.stderr
    assert not (out / "work" / "units").exists() and not (out / "work" / "index").exists()
    assert not (out / "work" / "merge").exists()
    left = sorted(p.name for p in out.iterdir() if not p.name.startswith(".virnucpro"))  # marker
    assert left == ["embeddings.h5", "logs", "run.json", "work"]
    disk = json.loads((out / "run.json").read_text())["disk"]
    assert disk["output_bytes"] <= disk["final_bytes"] <= disk["peak_bytes"]
    again = run_cli(*embed_args(proteins, out, tiny_esm_hf))  # complete: nothing to do
    assert again.returncode == 0, again.stderr
    assert not (out / "work" / "index").exists()
    kept = tmp_path / "kept"
    done = run_cli(*embed_args(proteins, kept, tiny_esm_hf, "--keep-work"))
    assert done.returncode == 0, done.stderr
    assert (kept / "work" / "index" / "sequence_index" / "meta.json").is_file()
    assert not (kept / "work" / "units").exists()  # unit files are in the output: gone anyway
    assert _read(kept / "embeddings.h5")[0] == _read(out / "embeddings.h5")[0]


def test_sigkill_during_the_merge_resumes_to_the_same_output(
    tmp_path, proteins, tiny_esm_hf
) -> None:
    import json

    import numpy as np
    from conftest import embed_args, run_cli

    reference = tmp_path / "reference"
    assert run_cli(*embed_args(proteins, reference, tiny_esm_hf)).returncode == 0
    out = tmp_path / "out"
    killed = run_cli(
        *embed_args(proteins, out, tiny_esm_hf), env={"VIRNUCPRO_TEST_MERGE_KILL_AFTER": "2"}
    )
    assert killed.returncode == -9, killed.stderr  # the parent itself, mid-merge
    assert not (out / "embeddings.h5").exists()
    assert (out / ".embeddings.h5.partial").is_file() and (out / "work" / "merge").is_dir()
    left = list((out / "work" / "units").glob("*.h5"))
    assert left, "the kill came before the last unit"
    resumed = run_cli(*embed_args(proteins, out, tiny_esm_hf))
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((out / "run.json").read_text())
    assert report["units"]["computed"] == 0  # everything came from the units and the partial
    ids, vectors, truncated = _read(out / "embeddings.h5")
    ref_ids, ref_vectors, ref_truncated = _read(reference / "embeddings.h5")
    assert ids == ref_ids
    np.testing.assert_array_equal(vectors, ref_vectors)
    np.testing.assert_array_equal(truncated, ref_truncated)
    assert not (out / ".embeddings.h5.partial").exists() and not (out / "work" / "merge").exists()
    assert not (out / "work" / "units").exists()


def _stage_leftovers(out: Path) -> list[str]:
    stages = out / "stages"
    found = [p for p in ("translate", "pairs", "combined") if (stages / p).exists()]
    for stage in ("dnabert_s", "esm2"):
        found += [f"{stage}/{p}" for p in ("work/index", "work/units", "embeddings.h5")
                  if (stages / stage / p).exists()]  # fmt: skip
    return found


def test_predict_removes_intermediates_after_success_keeps_them_after_failure(tmp_path) -> None:
    import csv
    import json
    import shutil

    from conftest import REPO, predict_args, run_cli

    from virnucpro.pipeline.selfcheck import write_random_models

    models = write_random_models(tmp_path / "models")
    example = shutil.copy(REPO / "examples" / "example.fna", tmp_path / "example.fna")
    good = tmp_path / "good"
    done = run_cli(*predict_args(example, good, models))
    assert done.returncode == 0, done.stderr
    assert _stage_leftovers(good) == []
    report = json.loads((good / "run.json").read_text())
    assert report["disk"]["final_bytes"] <= report["disk"]["peak_bytes"]
    for name in ("prediction_results.txt", "virnucpro_summary.tsv", "viral.fna", "report.html"):
        assert (good / name).is_file()
    with open(good / "prediction_results.txt") as f:
        frame = next(csv.DictReader(f, delimiter="\t"))["Sequence_ID"]

    out = tmp_path / "out"
    args = predict_args(example, out, models, "--max-retries", "0")
    failed = run_cli(*args, env={"VIRNUCPRO_TEST_CRASH_ID": frame})
    assert failed.returncode == 2, failed.stderr
    assert set(_stage_leftovers(out)) >= {"translate", "dnabert_s/work/index",
                                          "dnabert_s/work/units", "esm2/work/index"}  # fmt: skip
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "run.json").read_text())["translate_reused"] is True
    assert _stage_leftovers(out) == []
    assert (out / "virnucpro_summary.tsv").read_text() == (
        good / "virnucpro_summary.tsv"
    ).read_text()


def test_cpu_default_is_one_single_threaded_worker_per_core_within_memory(tmp_path) -> None:
    from virnucpro.engine.devices import default_cpu_workers, threads_per_worker

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 1000)
    assert default_cpu_workers(str(weights), cores=8, memory=1 << 30) == 8
    assert threads_per_worker(["cpu"] * 8) >= 1
    assert default_cpu_workers(str(weights), cores=8, memory=3 * 1000 * 3) == 3  # memory-bound
    assert default_cpu_workers(str(weights), cores=8, memory=10) == 1  # never below one
    assert default_cpu_workers(str(tmp_path), cores=2, memory=1 << 30) == 2  # a model folder
