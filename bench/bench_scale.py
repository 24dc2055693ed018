"""Benchmark the engine's parent process at scale: peak RSS and peak disk against N sequences.

For each size, tiny protein sequences (3 to 19 residues, ids ``seq0000000``...) are embedded by
``virnucpro embed`` with a tiny RANDOM ESM-2 (``--layers``/``--hidden``, real HF format), one
CPU worker, in a fresh process. The parent's peak RSS is its own ``VmHWM`` (the workers
are separate processes; ``ru_maxrss`` would carry the benchmark process's RSS); the peak
and final disk come from ``run.json`` (``disk``: the run
folder sampled after the compute and after every merged unit). ``--predict-reads`` also runs
``virnucpro predict`` on simulated 500 nt reads of a real genome with the tiny random models
of ``selfcheck`` and reports the disk left after success against the input, with and without
``--keep-embeddings``.

    python bench/bench_scale.py [--sizes 10000,100000,1000000] [--predict-reads 20000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common

_PARENT = """
import json, sys
from virnucpro import cli

def hwm_kib():  # this process image's own peak (ru_maxrss can carry the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
code = cli.main(sys.argv[1:])
print(json.dumps({"code": code, "rss_kib": hwm_kib()}))
"""


def write_proteins(path: Path, n: int) -> Path:
    residues = "ACDEFGHIKLMNPQRSTVWY"
    with open(path, "w", buffering=1 << 20) as f:
        for i in range(n):
            f.write(f">seq{i:07d}\n{(residues[i % 20 :] + residues)[: 3 + i % 17]}\n")
    return path


def run_parent(args: list[str]) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _PARENT, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args[:3])} failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


def embed_sizes(tmp: Path, sizes: list[int], model: Path, workers: int) -> list[tuple]:
    rows = []
    for n in sizes:
        fasta = write_proteins(tmp / f"p{n}.fa", n)
        out = tmp / f"e{n}"
        r = run_parent(["embed", str(fasta), "-o", str(out), "--model", str(model), "--devices",
                        "cpu", "--workers", str(workers), "-q"])  # fmt: skip
        report = json.loads((out / "run.json").read_text())
        disk = report["disk"]
        print(f"{n}: {r} disk {disk} input {fasta.stat().st_size}", flush=True)
        rows.append((n, r["rss_kib"] * 1024, disk["peak_bytes"], disk["final_bytes"],
                     disk["output_bytes"], fasta.stat().st_size, r["wall_s"]))  # fmt: skip
        subprocess.run(["rm", "-rf", str(out), str(fasta)], check=True)
    return rows


def predict_disk(tmp: Path, reads: int) -> list[tuple]:
    import bench_translate

    from virnucpro.pipeline.selfcheck import write_random_models

    models = write_random_models(tmp / "models")
    simulated = bench_translate.simulate_reads(common.GENOME, reads, 500, seed=5)
    fasta = common.write_fasta(tmp / "reads.fa", simulated)
    rows = []
    for extra in ([], ["--keep-embeddings"]):
        out = tmp / f"predict{len(extra)}"
        r = run_parent(["predict", str(fasta), "-o", str(out), "--esm-model", str(models["esm"]),
                        "--dnabert-model", str(models["dnabert"]), "--classifier",
                        str(models["classifier"]), "--devices", "cpu", "--workers", "1", "-q",
                        *extra])  # fmt: skip
        disk = json.loads((out / "run.json").read_text())["disk"]
        print(f"predict {extra}: {r} disk {disk}", flush=True)
        rows.append((" ".join(extra) or "(default)", fasta.stat().st_size, disk["peak_bytes"],
                     disk["final_bytes"], r["wall_s"]))  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--predict-reads", type=int, default=20000)
    args = parser.parse_args()
    common.print_command("bench_scale.py", args)
    common.print_machine()
    from virnucpro.models.tiny import write_tiny_esm2_hf

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = write_tiny_esm2_hf(tmp / "tiny", num_layers=args.layers, hidden=args.hidden,
                                   heads=4, seed=0, use_transformers=False)  # fmt: skip
        sizes = [int(v) for v in args.sizes.split(",") if v]
        rows = embed_sizes(tmp, sizes, model, args.workers)
        base = rows[0][1] if rows else 0
        print()
        print(common.markdown_table(
            ["sequences", "parent peak RSS MiB", "vs first MiB", "peak disk MiB",
             "final MiB", "embeddings.h5 MiB", "peak / final", "input MiB", "wall s"],
            [(f"{n:,}", mib(rss), f"{(rss - base) / 2**20:+.1f}", mib(peak), mib(final),
              mib(output), f"{peak / final:.2f}", mib(size), f"{wall:.0f}")
             for n, rss, peak, final, output, size, wall in rows]))  # fmt: skip
        if args.predict_reads:
            prows = predict_disk(tmp, args.predict_reads)
            print()
            print(common.markdown_table(
                ["predict", "input MiB", "peak disk MiB", "disk after success MiB",
                 "after / input", "wall s"],
                [(label, mib(size), mib(peak), mib(final), f"{final / size:.2f}", f"{wall:.0f}")
                 for label, size, peak, final, wall in prows]))  # fmt: skip


if __name__ == "__main__":
    main()
