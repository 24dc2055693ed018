"""``virnucpro predict`` end to end: this tree against another version installed side by side.

Both versions run the same command line on the same reads (default 20,000 x 500 bp drawn on
both strands of a real genome) with the same tiny RANDOM models of ``virnucpro selfcheck``,
each as a fresh process in a fresh directory with its own ``PYTHONPATH``. Repetitions are
interleaved (old, new, old, new, ...) and the fastest run of each counts; the ratio is
old seconds over new seconds. The DNABERT-S and ESM-2 stages' padding fractions and
attention kernels come from their run.json and HDF5 attributes. The tables of the two
versions are compared too (same frames scored, same calls).

    git -C /work/main worktree add /tmp/old cc07a81
    python bench/bench_predict_versions.py --old-src /tmp/old/src [--reads 20000] [--repeats 3]
    git -C /work/main worktree remove --force /tmp/old
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_translate
import common
import h5py

NEW_SRC = Path(__file__).resolve().parents[1] / "src"
_RUNS = itertools.count()


def run_version(
    name: str, src: Path, env: dict, reads: Path, tmp: Path, models: dict, args, quiet
) -> dict:
    """One ``predict`` process of the version under ``src``; seconds and stage facts."""

    def once() -> tuple[Path, subprocess.CompletedProcess]:
        out = tmp / f"out_{name}_{next(_RUNS)}"
        command = [
            sys.executable, "-m", "virnucpro", "predict", str(reads), "-o", str(out),
            "--esm-model", str(models["esm"]), "--dnabert-model", str(models["dnabert"]),
            "--classifier", str(models["classifier"]), "--chunk-size", str(args.chunk_size),
            "--devices", "cpu", "--workers", str(args.workers), "-q",
        ]  # fmt: skip
        full_env = {**os.environ, **env, "PYTHONPATH": str(src)}
        return out, subprocess.run(command, capture_output=True, text=True, env=full_env)

    measured = common.measure(once, quiet, attempts=args.attempts)
    out, done = measured.result
    if done.returncode != 0:
        raise SystemExit(f"{name}: predict failed ({done.returncode}): {done.stderr.strip()}")
    stages = {}
    for stage in ("dnabert_s", "esm2"):
        report = common.load_json(out / "stages" / stage / "run.json")
        with h5py.File(out / "stages" / stage / "embeddings.h5", "r") as f:
            kernel = str(f.attrs.get("attention", "-"))
        stages[stage] = {
            "padding": report["padding_fraction"],
            "tokens": report["tokens"],
            "attention": kernel,
            "seconds": common.load_json(out / "run.json")["timings_s"][stage],
        }
    with open(out / "prediction_results.txt") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
        calls = {row[0]: (row[1], float(row[3])) for row in rows}
    return {"seconds": measured.seconds, "foreign": measured.foreign, "stages": stages,
            "calls": calls}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old-src", type=Path, required=True, help="the other version's src/")
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--attempts", type=int, default=3, help="runs per measurement while disturbed"
    )
    parser.add_argument(
        "--overlap-too",
        action="store_true",
        help="also run this tree with VIRNUCPRO_OVERLAP=1 (the prefetch thread forced on)",
    )
    common.add_measurement_options(parser)
    args = parser.parse_args()
    quiet = common.Quiet(max_wait=args.max_wait)
    info = common.print_machine()
    common.print_command("bench_predict_versions.py", args)
    old_rev = subprocess.run(
        ["git", "-C", str(args.old_src), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True,
    ).stdout.strip() or "unknown"  # fmt: skip
    from virnucpro.pipeline.selfcheck import write_random_models

    reads = bench_translate.simulate_reads(common.GENOME, args.reads, args.length, args.seed)
    versions = {"old": (args.old_src.resolve(), {}), "new": (NEW_SRC, {"VIRNUCPRO_OVERLAP": "0"})}
    if args.overlap_too:
        versions["new+overlap"] = (NEW_SRC, {"VIRNUCPRO_OVERLAP": "1"})
    runs: dict[str, list[dict]] = {name: [] for name in versions}
    with tempfile.TemporaryDirectory(prefix="bench_versions_") as name:
        tmp = Path(name)
        fasta = common.write_fasta(tmp / "reads.fa", reads)
        models = write_random_models(tmp / "models")
        for repeat in range(args.repeats):
            for version, (src, env) in versions.items():
                runs[version].append(
                    run_version(version, src, env, fasta, tmp, models, args, quiet)
                )
            print(
                f"  repeat {repeat + 1}/{args.repeats}: "
                + ", ".join(f"{v} {runs[v][-1]['seconds']:.1f}s" for v in versions),
                flush=True,
            )
    best = {v: min(r, key=lambda run: run["seconds"]) for v, r in runs.items()}
    old_calls, new_calls = best["old"]["calls"], best["new"]["calls"]
    same_frames = sorted(old_calls) == sorted(new_calls)
    differ = sum(old_calls[k][0] != new_calls[k][0] for k in old_calls if k in new_calls)
    worst = max((abs(old_calls[k][1] - new_calls[k][1]) for k in old_calls if k in new_calls),
                default=0.0)  # fmt: skip
    rows = []
    labels = {
        "old": f"before (`{old_rev}`)",
        "new": f"this tree (`{info['commit']}`)",
        "new+overlap": f"this tree, VIRNUCPRO_OVERLAP=1 (`{info['commit']}`)",
    }
    for version in versions:
        label, b = labels[version], best[version]
        dna, esm = b["stages"]["dnabert_s"], b["stages"]["esm2"]
        rows.append([
            label, f"{b['seconds']:.1f}", f"{args.reads / b['seconds']:,.0f}",
            f"{best['old']['seconds'] / b['seconds']:.2f}",
            f"{dna['seconds']:.1f}", f"{dna['padding']:.2%}", dna["attention"],
            f"{esm['seconds']:.1f}", f"{esm['padding']:.2%}",
            " / ".join(f"{r['seconds']:.1f}" for r in runs[version]),
            f"{b['foreign']:.0%}",
        ])  # fmt: skip
    print(f"\n### predict end to end, {args.reads:,} reads x {args.length} bp, --devices cpu "
          f"--workers {args.workers}, best of {args.repeats} (interleaved)")  # fmt: skip
    print(common.markdown_table(
        ["version", "best s", "reads/s", "x before", "DNABERT-S stage s", "DNABERT-S padding",
         "DNABERT-S attention", "ESM-2 stage s", "ESM-2 padding", "all runs s",
         "other jobs' CPU"], rows))  # fmt: skip
    print(f"\nprediction_results.txt: same frames scored: {same_frames} ({len(new_calls):,}); "
          f"calls that differ: {differ}; max |P(virus) difference|: {worst:.2e}")  # fmt: skip
    print(f"measured {info['date']}; {quiet.summary()}")


if __name__ == "__main__":
    main()
