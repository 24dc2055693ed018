"""The shipped workflow files, run for real: Snakemake (the real package) and the Slurm scripts.

Slurm itself is not here: the scripts run under bash with the variables Slurm would set
(``SLURM_ARRAY_TASK_ID`` ...) and small stand-ins for ``sbatch``, ``srun`` and ``scontrol``
on PATH; every ``virnucpro`` and ``ray`` command in them runs as written.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, embed_args, predict_args, read_h5, run_cli, write_fasta

WORKFLOWS = REPO / "workflows"
SNAKEFILE = WORKFLOWS / "snakemake" / "Snakefile"
SLURM = WORKFLOWS / "slurm"
EXAMPLE = REPO / "examples" / "example.fna"
VIRNUCPRO = f"{shlex.quote(sys.executable)} -m virnucpro"
CPU_ARGS = "--devices cpu --workers 1 --tokens-per-batch 512 --unit-tokens 600 --quiet"


def _engine_args(model: Path) -> str:
    return f"--model {shlex.quote(str(model))} {CPU_ARGS}"


@pytest.fixture(scope="module")
def single(tmp_path_factory, proteins, tiny_esm_hf) -> tuple[list[str], np.ndarray]:
    """The reference: one plain ``virnucpro embed`` run."""
    out = tmp_path_factory.mktemp("single") / "out"
    result = run_cli(*embed_args(proteins, out, tiny_esm_hf))
    assert result.returncode == 0, result.stderr
    return read_h5(out / "embeddings.h5")


def _same_as_single(out: Path, single) -> None:
    ids, vectors = read_h5(out / "embeddings.h5")
    assert ids == single[0]
    np.testing.assert_allclose(vectors, single[1], atol=1e-6, rtol=0)  # as tests/test_shard.py


@pytest.fixture(scope="module")
def random_models(tmp_path_factory) -> dict[str, Path]:
    from virnucpro.pipeline.selfcheck import write_random_models

    return write_random_models(tmp_path_factory.mktemp("random_models"))


def _mates(folder: Path) -> tuple[Path, Path]:
    """Read pairs cut from the example contigs (names r{i}/1 and r{i}/2)."""
    from virnucpro.io.fasta import read_records
    from virnucpro.pipeline.chunking import reverse_complement

    r1, r2 = [], []
    for i, record in enumerate(list(read_records(EXAMPLE))[:8]):
        r1.append((f"r{i}/1", record.seq[:250]))
        r2.append((f"r{i}/2", reverse_complement(record.seq[250:500])))
    return write_fasta(folder / "R1.fa", r1), write_fasta(folder / "R2.fa", r2)


def test_snakemake_shards_then_merge_equal_a_single_embed_and_predict_runs_per_sample(
    tmp_path, proteins, tiny_esm_hf, single, random_models
):
    if importlib.util.find_spec("snakemake") is None:
        pytest.skip("snakemake is not installed (pip install 'virnucpro[test]')")
    sheet_dir = tmp_path / "sheet"
    sheet_dir.mkdir()
    r1, r2 = _mates(sheet_dir)
    shutil.copy(EXAMPLE, sheet_dir / "contigs.fna")
    sheet = sheet_dir / "samples.csv"
    sheet.write_text(f"sample,fastq_1,fastq_2\ncontigs,contigs.fna,\nreads,{r1.name},{r2.name}\n")
    models = predict_args(EXAMPLE, tmp_path, random_models)[4:]  # the flags after -o OUT
    config = {
        "input": str(proteins),
        "out": str(tmp_path / "embedded"),
        "shards": 2,
        "model": str(tiny_esm_hf),
        "embed_args": CPU_ARGS,
        "samplesheet": str(sheet),
        "predict_out": str(tmp_path / "predicted"),
        "predict_args": shlex.join(models),
        "virnucpro": VIRNUCPRO,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = subprocess.run(
        [
            sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--cores", "2",
            "--directory", str(tmp_path / "snakemake"), "--configfile",
            str(tmp_path / "config.json"),
        ],
        capture_output=True, text=True, timeout=900, env=dict(os.environ),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    log = result.stdout + result.stderr
    for i in range(2):  # one job per shard, then the merge
        assert (tmp_path / "embedded" / "work" / "shards" / f"{i}of2.json").is_file()
    assert "rule merge:" in log and log.count("rule shard:") == 2
    _same_as_single(tmp_path / "embedded", single)
    # predict per sample: the same files as running predict by hand on that sample
    direct = tmp_path / "direct"
    by_hand = run_cli(*predict_args(sheet_dir / "contigs.fna", direct, random_models))
    assert by_hand.returncode == 0, by_hand.stderr
    ours = tmp_path / "predicted" / "contigs"
    for name in ("virnucpro_summary.tsv", "prediction_results.txt", "chunks.tsv"):
        assert (ours / name).read_text() == (direct / name).read_text(), name
    reads = tmp_path / "predicted" / "reads"
    pairs = (reads / "pairs.tsv").read_text().splitlines()
    assert pairs[0].startswith("pair\t") and len(pairs) == 1 + 8  # run with --paired


def _sbatch_header(script: Path) -> dict[str, str]:
    options = {}
    for line in script.read_text().splitlines():
        match = re.match(r"#SBATCH --([a-z-]+)(?:=(\S+))?", line)
        if match:
            options[match.group(1)] = match.group(2) or ""
    return options


def _bash(script: Path, env: dict, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
        **kwargs,
    )


def test_slurm_array_scripts_run_every_task_then_merge(tmp_path, proteins, tiny_esm_hf, single):
    header = _sbatch_header(SLURM / "embed_array.sh")
    first, last = (int(v) for v in header["array"].split("-"))
    assert (
        first == 0
        and '--shard "$SLURM_ARRAY_TASK_ID/$SHARDS"' in (SLURM / "embed_array.sh").read_text()
    )  # 0-based tasks are the shard numbers
    assert header["gpus"] == "1" and last >= first
    out = tmp_path / "out"
    env = {
        "INPUT": str(proteins),
        "OUT": str(out),
        "MODEL": str(tiny_esm_hf),
        "VIRNUCPRO": VIRNUCPRO,
        "EMBED_ARGS": CPU_ARGS,
        "SLURM_ARRAY_JOB_ID": "77",
        "SLURM_ARRAY_TASK_COUNT": "3",  # what Slurm sets for --array=0-2
    }
    for task in range(3):
        result = _bash(SLURM / "embed_array.sh", {**env, "SLURM_ARRAY_TASK_ID": str(task)})
        assert result.returncode == 0, result.stderr
        assert (out / "work" / "shards" / f"{task}of3.json").is_file()
    assert not (out / "embeddings.h5").exists()
    merged = _bash(SLURM / "merge.sh", {"OUT": str(out), "VIRNUCPRO": VIRNUCPRO})
    assert merged.returncode == 0, merged.stderr
    _same_as_single(out, single)


def test_slurm_submit_chains_the_merge_after_the_array(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    sbatch = bin_dir / "sbatch"  # stands in for Slurm: records the call, answers a job id
    sbatch.write_text(f'#!/bin/bash\necho "$*" >> {calls}\necho "4242;cluster"\n')
    sbatch.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "INPUT": "in.faa", "OUT": "/shared/o"}
    result = _bash(SLURM / "submit.sh", env)
    assert result.returncode == 0, result.stderr
    array, merge = calls.read_text().splitlines()
    assert array == f"--parsable --export=ALL {SLURM / 'embed_array.sh'}"
    assert merge == f"--dependency=afterany:4242 --export=ALL {SLURM / 'merge.sh'}"
    missing = _bash(SLURM / "submit.sh", {"PATH": env["PATH"], "INPUT": "", "OUT": ""})
    assert missing.returncode != 0 and "set INPUT" in missing.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slurm_ray_script_runs_head_and_driver_on_one_node(tmp_path, proteins, tiny_esm_hf, single):
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install 'virnucpro[ray]')")
    header = _sbatch_header(SLURM / "ray_cluster.sh")
    assert header["ntasks-per-node"] == "1" and int(header["nodes"]) >= 2
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\nhostname\n")  # a one-node allocation
    # srun: drop its options, run the step here (`-w NODE` names the only node)
    (bin_dir / "srun").write_text(
        "#!/bin/bash\nwhile [[ $1 == -* ]]; do [[ $1 == -w ]] && shift; shift; done\n"
        'if [[ $1 == hostname ]]; then echo 127.0.0.1; exit; fi\nexec "$@"\n'
    )
    for tool in ("scontrol", "srun"):
        (bin_dir / tool).chmod(0o755)
    ray_tmp = tempfile.mkdtemp(prefix="vr", dir="/tmp")  # Ray's socket paths must stay short
    out = tmp_path / "out"
    env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "INPUT": str(proteins),
        "OUT": str(out),
        "MODEL": str(tiny_esm_hf),
        "VIRNUCPRO": VIRNUCPRO,
        "PYTHON": sys.executable,
        "EMBED_ARGS": CPU_ARGS.replace("--devices cpu ", ""),  # the script's --devices auto
        "GPUS": "0",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_CPUS_PER_TASK": "2",
        "VIRNUCPRO_RAY_TMPDIR": ray_tmp,
        "RAY_PORT": str(_free_port()),
    }
    process = subprocess.Popen(
        ["bash", str(SLURM / "ray_cluster.sh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
        start_new_session=True,  # its own process group: the test stops only what it started
    )
    try:
        output, _ = process.communicate(timeout=600)
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)  # `ray start --block` stops its Ray node
        except ProcessLookupError:
            pass
        process.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert process.returncode == 0, output[-4000:]
    _same_as_single(out, single)
    report = json.loads((out / "run.json").read_text())
    assert report["parameters"]["backend"] == "ray"
