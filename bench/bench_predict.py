"""Benchmark ``virnucpro predict`` end to end on simulated reads, with the time of every stage.

Reads (default 20,000 x 500 bp) are drawn at seeded random positions on both strands of a real
bacterial genome. The command line runs end to end (a fresh process, a fresh output directory)
with the tiny RANDOM models of ``virnucpro selfcheck`` (real file formats: a Hugging Face ESM-2
folder, a DNABERT-S folder with its tokenizer, an original-format pickled classifier), so the
figures show the pipeline's own costs, not those of the 3B model. Each worker count is run
``--repeats`` times, interleaved; the best run is reported with its per-stage timings
(``run.json`` of predict and of each engine stage). ``translate_file`` alone is timed on the
same reads.

    python bench/bench_predict.py [--reads 20000] [--workers 1,2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_translate
import common

STAGES = ("dnabert_s", "esm2")


_RUNS = itertools.count()


def run_predict(
    reads: Path, tmp: Path, models: dict, workers: int, chunk_size: int, quiet: common.Quiet
) -> dict:
    """A ``virnucpro predict`` process in a fresh directory: wall seconds, its run.json and
    its stages' run.json."""

    def once() -> tuple[Path, subprocess.CompletedProcess]:
        out = tmp / f"out_w{workers}_{next(_RUNS)}"
        command = [
            sys.executable, "-m", "virnucpro", "predict", str(reads), "-o", str(out),
            "--esm-model", str(models["esm"]), "--dnabert-model", str(models["dnabert"]),
            "--classifier", str(models["classifier"]), "--chunk-size", str(chunk_size),
            "--devices", "cpu", "--workers", str(workers), "-q",
        ]  # fmt: skip
        return out, subprocess.run(command, capture_output=True, text=True)

    measured = common.measure(once, quiet)
    out, done = measured.result
    if done.returncode != 0:
        raise SystemExit(f"predict failed ({done.returncode}): {done.stderr.strip()}")
    report = common.load_json(out / "run.json")
    stages = {}
    for name in STAGES:
        stages[name] = common.load_json(out / "stages" / name / "run.json")
        stages[name]["phases"] = common.engine_phases(out / "stages" / name)
    return {
        "seconds": measured.seconds,
        "foreign": measured.foreign,
        "report": report,
        "stages": stages,
    }


def time_translate(reads: Path, out: Path, chunk_size: int, repeats: int, quiet) -> float:
    """Best seconds of ``translate_file`` alone on the same reads (this process, all cores)."""
    from virnucpro.pipeline.translate import translate_file

    return min(
        common.measure(lambda: translate_file(reads, out, chunk_size), quiet).seconds
        for _ in range(repeats)
    )


def stage_rows(run: dict, n_reads: int) -> list[list[str]]:
    """Seconds and share of every part of one predict run."""
    timings = run["report"]["timings_s"]
    wall = run["seconds"]
    parts = [
        ("process start, imports, argument parsing", wall - timings["total"]),
        ("resolve and verify models", timings.get("resolve_models", 0.0)),
        ("translate (chunk + six frames)", timings.get("translate", 0.0)),
    ]
    for name in STAGES:
        stage = run["stages"][name]
        st = stage["timings_s"]
        tokens, compute = stage["tokens"], st.get("compute", 0.0)
        phases = stage["phases"]
        start = phases.get("spawn_import_s", 0.0) + phases.get("load_model_s", 0.0)
        parts.append((f"{name}: index", st.get("index", 0.0)))
        parts.append(
            (
                f"{name}: worker start (spawn + imports {phases.get('spawn_import_s', 0):.2f} s, "
                f"model load {phases.get('load_model_s', 0):.2f} s)",
                start,
            )
        )
        parts.append(
            (
                f"{name}: units ({tokens:,} tokens, {tokens / (compute - start):,.0f} tok/s, "
                f"padding {stage['padding_fraction']:.2%}) and worker exit",
                compute - start,
            )
        )
        parts.append((f"{name}: merge", st.get("merge", 0.0)))
        other = timings.get(name, 0.0) - sum(st.get(k, 0.0) for k in ("index", "compute", "merge"))
        parts.append((f"{name}: rest of the stage (job state, report)", other))
    parts.append(("join, classify, write tables", timings.get("classify_and_write", 0.0)))
    rest = wall - sum(seconds for _, seconds in parts)
    parts.append(("unaccounted (predict run.json, exit)", rest))
    rows = [[label, f"{s:.2f}", f"{s / wall:.1%}"] for label, s in parts]
    rows.append(["**total**", f"{wall:.2f}", f"{n_reads / wall:,.0f} reads/s"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--seed", type=int, default=0)
    common.add_measurement_options(parser)
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    quiet = common.Quiet(max_wait=args.max_wait)
    info = common.print_machine()
    common.print_command("bench_predict.py", args)
    from virnucpro.pipeline.selfcheck import write_random_models

    reads = bench_translate.simulate_reads(common.GENOME, args.reads, args.length, args.seed)
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as name:
        tmp = Path(name)
        fasta = common.write_fasta(tmp / "reads.fa", reads)
        models = write_random_models(tmp / "models")
        translate_s = time_translate(
            fasta, tmp / "translate_only", args.chunk_size, args.repeats, quiet
        )
        runs: dict[int, list[dict]] = {w: [] for w in workers}
        for repeat in range(args.repeats):
            for w in workers:
                runs[w].append(run_predict(fasta, tmp, models, w, args.chunk_size, quiet))
            print(
                f"  repeat {repeat + 1}/{args.repeats}: "
                + ", ".join(f"{w} worker(s) {runs[w][-1]['seconds']:.1f}s" for w in workers),
                flush=True,
            )
    counts = runs[workers[0]][0]["report"]["counts"]
    print(
        f"\n{args.reads:,} reads x {args.length} bp -> {counts['chunks']:,} chunks -> "
        f"{counts['frames_kept']:,} frames kept ({counts['chunks_without_frame']:,} chunks "
        f"without a stop-free frame)"
    )
    print(
        f"translate_file alone: {args.reads / translate_s:,.0f} reads/s "
        f"({translate_s:.2f} s, best of {args.repeats})"
    )
    summary = []
    for w in workers:
        best_run = min(runs[w], key=lambda r: r["seconds"])
        wall = best_run["seconds"]
        summary.append(
            [
                f"{w}",
                f"{wall:.1f}",
                f"{args.reads / wall:,.0f}",
                " / ".join(f"{r['seconds']:.1f}" for r in runs[w]),
            ]
        )
        print(f"\n### predict, --devices cpu --workers {w} (best of {args.repeats})")
        print(common.markdown_table(["part", "seconds", "share"], stage_rows(best_run, args.reads)))
    print("\n### end to end")
    print(common.markdown_table(["workers", "best s", "reads/s", "all runs s"], summary))
    print(f"\nmeasured {info['date']}; {quiet.summary()}")


if __name__ == "__main__":
    main()
