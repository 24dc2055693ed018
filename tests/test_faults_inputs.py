"""Faults a demanding user meets: wrong input type, odd compression, shared or foreign output
directories, damaged run records, API results that must not lie, usage errors (issue 11).

Real processes, real files; each test first reproduces the fault, then shows the behaviour.
"""

from __future__ import annotations

import bz2
import csv
import json
import lzma
import os
import random
import shutil
import socket
import subprocess
import sys
import time
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


# -- items 7, 8, 11: the output directory --------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_esm_hf) -> tuple[Path, Path]:
    """A complete embed run (input, OUT); tests copy it before changing anything."""
    folder = tmp_path_factory.mktemp("finished")
    inputs = write_fasta(folder / "p.faa", protein_records(10, seed=9))
    out = folder / "out"
    result = run_cli(*embed_args(inputs, out, tiny_esm_hf))
    assert result.returncode == 0, result.stderr
    return inputs, out


def _copy_run(finished_run, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished_run[1], out, symlinks=True)
    return out


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_two_runs_on_one_out_second_refused(tmp_path, tiny_esm_hf):
    inputs = write_fasta(tmp_path / "p.faa", protein_records(24, seed=4))
    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-m", "virnucpro", *embed_args(inputs, out, tiny_esm_hf)],
        env=dict(os.environ, VIRNUCPRO_TEST_DELAY="0.5"),  # long enough to be running
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = out / ".virnucpro.lock"
    deadline = time.time() + 120
    while not (lock.exists() and str(first.pid) in lock.read_text()):
        assert time.time() < deadline and first.poll() is None, "the first run never locked"
        time.sleep(0.05)
    second = run_cli(*embed_args(inputs, out, tiny_esm_hf))
    assert first.poll() is None  # still running: the second one did not wait for it
    assert second.returncode == 1, second.stderr
    line = one_error_line(second.stderr)
    assert "in use by another virnucpro run" in line and f"pid {first.pid} on " in line
    assert socket.gethostname() in line
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    ids, vectors = read_h5(out / "embeddings.h5")
    assert ids == [rid for rid, _ in protein_records(24, seed=4)] and np.isfinite(vectors).all()
    assert json.loads((out / "run.json").read_text())["status"] == "complete"
    assert not lock.exists()  # released and removed at the end


def test_stale_lock_and_temporaries_are_cleaned(finished_run, tmp_path, tiny_esm_hf):
    out = _copy_run(finished_run, tmp_path)
    dead = _dead_pid()
    (out / ".virnucpro.lock").write_text(
        json.dumps({"pid": dead, "host": socket.gethostname(), "command": "embed"})
    )
    left = [out / f".run.json.tmp-{dead}", out / "work" / f".job.json.tmp-{dead}"]
    for path in left:
        path.write_text("half written")
    (out / f".embeddings.h5.tmp-{dead}").mkdir()  # an atomic_dir left behind
    result = run_cli(*embed_args(finished_run[0], out, tiny_esm_hf))
    assert result.returncode == 0, result.stderr  # the stale lock was taken over
    assert not any(p.exists() for p in left) and not (out / f".embeddings.h5.tmp-{dead}").exists()
    assert not (out / ".virnucpro.lock").exists()


def test_foreign_directory_refused_untouched(tmp_path, tiny_esm_hf, models):
    inputs = write_fasta(tmp_path / "p.faa", protein_records(6))
    out = tmp_path / "mine"
    (out / "work" / "units").mkdir(parents=True)
    (out / "embeddings.h5").write_bytes(b"the user's own results")
    (out / "notes.txt").write_text("do not lose me")
    (out / "work" / "units" / "keep.h5").write_bytes(b"also mine")
    before = _snapshot(out)
    for extra in ([], ["--restart"]):
        result = run_cli(*embed_args(inputs, out, tiny_esm_hf, *extra))
        assert result.returncode == 1, result.stderr
        line = one_error_line(result.stderr)
        assert "not a virnucpro run directory" in line
        assert "embeddings.h5" in line and "notes.txt" in line and "work" in line
        assert _snapshot(out) == before and sorted(os.listdir(out)) == sorted(
            ["embeddings.h5", "notes.txt", "work"]
        )
    # an empty directory is fine (and becomes a run directory)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli(
        *predict_args(write_fasta(tmp_path / "x.fa", [("s", "GGTTAACTAGCTAGGCCGT")]), empty, models)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((empty / ".virnucpro-run.json").read_text())["command"] == "predict"


def test_run_dir_of_another_command_and_symlinks_refused(finished_run, tmp_path, models):
    out = _copy_run(finished_run, tmp_path)
    before = _snapshot(out)
    fasta = write_fasta(tmp_path / "x.fa", [("s", "GGTTAACTAGCTAGGCCGT")])
    result = run_cli(*predict_args(fasta, out, models, "--restart"))
    assert result.returncode == 1, result.stderr
    assert "is a run directory of `virnucpro embed`" in one_error_line(result.stderr)
    assert _snapshot(out) == before
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious.txt").write_text("keep")
    (out / "work" / "units").mkdir(exist_ok=True)
    (out / "work" / "units" / "u0001.h5").symlink_to(target / "precious.txt")
    result = run_cli(*embed_args(finished_run[0], out, Path("unused"), "--restart"))
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert "u0001.h5 is a symbolic link" in line
    assert (target / "precious.txt").read_text() == "keep"
    assert (out / "work" / "units" / "u0001.h5").is_symlink()


def test_garbage_job_json_is_one_line(finished_run, tmp_path, tiny_esm_hf):
    out = _copy_run(finished_run, tmp_path)
    (out / "work" / "job.json").write_bytes(b"\x00garbage{")
    result = run_cli(*embed_args(finished_run[0], out, tiny_esm_hf))
    assert result.returncode == 1, result.stderr
    line = one_error_line(result.stderr)
    assert str(out / "work" / "job.json") in line and "--restart" in line
    result = run_cli("merge", str(out))
    assert result.returncode == 1 and "job.json" in one_error_line(result.stderr)
    (out / "work" / "units").mkdir(exist_ok=True)
    (out / "work" / "units" / "my_notes.txt").write_text("not virnucpro's")
    result = run_cli(*embed_args(finished_run[0], out, tiny_esm_hf, "--restart"))
    assert result.returncode == 0, result.stderr
    assert read_h5(out / "embeddings.h5")[0] == read_h5(finished_run[1] / "embeddings.h5")[0]
    # --restart and the clean-up after a complete run removed only what virnucpro wrote
    assert (out / "work" / "units" / "my_notes.txt").read_text() == "not virnucpro's"
    assert [p.name for p in (out / "work" / "units").iterdir()] == ["my_notes.txt"]


def test_shards_share_out_but_not_with_a_whole_run(tmp_path):
    """Job-array tasks run side by side in one OUT; a whole run waits for none of them."""
    from virnucpro.engine.claim import RunDirError, claim_run_dir

    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from virnucpro.engine.claim import claim_run_dir\n"
            f"with claim_run_dir({str(out)!r}, 'embed', shard='0of2'):\n"
            "    print('held', flush=True); time.sleep(120)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with claim_run_dir(out, "embed", shard="1of2"):  # another shard: fine
            pass
        with pytest.raises(RunDirError, match=r"shard 0of2, pid \d+") as refused:
            with claim_run_dir(out, "embed", shard="0of2"):  # the same shard: refused
                pass
        assert str(holder.pid) in str(refused.value)
        with pytest.raises(RunDirError, match="in use by another virnucpro run"):
            with claim_run_dir(out, "embed"):  # a whole run (or merge): refused
                pass
    finally:
        holder.kill()
        holder.wait()
    with claim_run_dir(out, "embed"):  # the holder is gone: its locks went with it
        pass


# -- item 12: the API tells the truth ------------------------------------------------------


def test_run_esm2_multi_gpu_raises_on_one_poison_sequence(tmp_path, tiny_esm_hf, monkeypatch):
    from virnucpro import run_esm2_multi_gpu, run_multi_gpu_inference

    records = protein_records(8, seed=11)
    inputs = write_fasta(tmp_path / "p.faa", records)
    poison = records[3][0]
    out = tmp_path / "api"
    options = {"devices": "cpu", "tokens_per_batch": 512, "unit_tokens": 120, "quiet": True}
    monkeypatch.setenv("VIRNUCPRO_TEST_CRASH_ID", poison)  # kills every worker that embeds it
    with pytest.raises(RuntimeError) as raised:  # default retries: the poison is isolated
        run_esm2_multi_gpu([inputs], out, world_size=1, model_name=str(tiny_esm_hf), **options)
    message = str(raised.value)
    assert "\n" not in message
    assert f"{len(records) - 1} of {len(records)} sequences embedded" in message
    assert f"1 failed (listed in {out / 'failed.tsv'})" in message
    assert (out / "failed.tsv").read_text().splitlines()[1].split("\t")[0] == poison
    with h5py.File(out / "embeddings.h5") as f:
        assert f.attrs["status"] == "partial"
        assert (f.attrs["expected"], f.attrs["embedded"], f.attrs["failed"]) == (8, 7, 1)
        assert f.attrs["missing"] == 0
    # run_multi_gpu_inference keeps its contract: (path, failed ranks), no exception
    path, failed_ranks = run_multi_gpu_inference([inputs], out, str(tiny_esm_hf), 1, **options)
    assert path == out / "embeddings.h5" and failed_ranks == []
    # a plain resume keeps the failure; --retry-failed computes it again
    monkeypatch.delenv("VIRNUCPRO_TEST_CRASH_ID")
    with pytest.raises(RuntimeError, match="1 failed"):
        run_esm2_multi_gpu([inputs], out, world_size=1, model_name=str(tiny_esm_hf), **options)
    path = run_esm2_multi_gpu(
        [inputs], out, world_size=1, model_name=str(tiny_esm_hf), retry_failed=True, **options
    )
    assert read_h5(path)[0] == [rid for rid, _ in records]
    with h5py.File(path) as f:
        assert f.attrs["status"] == "complete" and f.attrs["failed"] == 0
    report = json.loads((out / "run.json").read_text())
    assert report["units"]["failed_retried"] == 1 and not (out / "failed.tsv").exists()


README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_api_example() -> str:
    text = README.read_text()
    start = text.index("### Python API")
    block = text[text.index("```python", start) + len("```python") : text.index("```\n", start)]
    return block


def test_readme_api_example_runs_as_a_script(tmp_path, tiny_esm_hf):
    (tmp_path / "a.faa").write_text(
        "".join(f">{rid}\n{seq}\n" for rid, seq in protein_records(6, seed=2))
    )
    code = _readme_api_example()
    assert 'if __name__ == "__main__":' in code
    script = tmp_path / "example.py"
    script.write_text(
        code.replace('"esm2_t33_650M_UR50D"', repr(str(tiny_esm_hf))).replace(
            "world_size=4", "world_size=1"
        )
        + "    print(len(ids), vectors.shape)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "6"
    # the same calls without the guard: one line that says what to do, before any work
    unguarded = tmp_path / "unguarded.py"
    lines = [line.strip() for line in code.splitlines()]
    unguarded.write_text("\n".join(line for line in lines if line and "__name__" not in line))
    result = subprocess.run(
        [sys.executable, str(unguarded)], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: virnucpro starts its workers with the 'spawn' method")
    assert 'if __name__ == "__main__":' in last and "bootstrapping" not in result.stderr
