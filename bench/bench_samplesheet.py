"""Benchmark ``predict --samplesheet`` (three samples, one run) against three separate runs.

Three samples of simulated reads from a real bacterial genome (seeded): one paired-end
(``--pairs`` pairs of 150 nt mates from 400 nt fragments) and two single-end (``--reads``
reads of 150 nt each). Each configuration is a fresh ``virnucpro`` process (or three) in a
fresh directory, with the tiny RANDOM models of ``virnucpro selfcheck``, so the figures show
the pipeline's fixed costs per stage (worker spawn, imports, model load: paid once per stage
by the sheet, three times by separate runs) and not the 3B model's compute. The two
configurations are interleaved ``--repeats`` times; the fastest run of each counts.

    python bench/bench_samplesheet.py [--pairs 500] [--reads 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_translate
import common

from virnucpro.pipeline.chunking import reverse_complement


def _fastq(path: Path, reads: list[tuple[str, str]]) -> Path:
    with gzip.open(path, "wt") as f:
        f.writelines(f"@{h}\n{s}\n+\n{'I' * len(s)}\n" for h, s in reads)
    return path


def make_samples(folder: Path, pairs: int, reads: int) -> dict[str, list[Path]]:
    fragments = bench_translate.simulate_reads(common.GENOME, pairs, 400, seed=3)
    r1 = [(f"frag{i}/1", s[:150]) for i, (_, s) in enumerate(fragments)]
    r2 = [(f"frag{i}/2", reverse_complement(s[-150:])) for i, (_, s) in enumerate(fragments)]
    samples = {"paired": [_fastq(folder / "p_R1.fq.gz", r1), _fastq(folder / "p_R2.fq.gz", r2)]}
    for n, name in enumerate(("single_a", "single_b")):
        simulated = bench_translate.simulate_reads(common.GENOME, reads, 150, seed=10 + n)
        samples[name] = [_fastq(folder / f"{name}.fq.gz", simulated)]
    return samples


def _common_args(models: dict) -> list[str]:
    return ["--esm-model", str(models["esm"]), "--dnabert-model", str(models["dnabert"]),
            "--classifier", str(models["classifier"]), "--devices", "cpu", "--workers", "1",
            "-q"]  # fmt: skip


def _run(command: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "virnucpro", *command], capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--reads", type=int, default=1000)
    common.add_measurement_options(parser)
    args = parser.parse_args()
    common.print_command("bench_samplesheet.py", args)
    common.print_machine()
    from virnucpro.pipeline.selfcheck import write_random_models

    quiet = common.Quiet(max_wait=args.max_wait)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        models = write_random_models(tmp / "models")
        samples = make_samples(tmp, args.pairs, args.reads)
        sheet = tmp / "samples.csv"
        sheet.write_text("sample,fastq_1,fastq_2\n" + "".join(
            f"{s},{f[0]},{f[1] if len(f) > 1 else ''}\n" for s, f in samples.items()))  # fmt: skip
        runs = iter(range(10**6))

        def together() -> None:
            _run(["predict", "--samplesheet", str(sheet), "-o", str(tmp / f"sheet{next(runs)}"),
                  *_common_args(models)])  # fmt: skip

        def separate() -> None:
            n = next(runs)
            for sample, files in samples.items():
                paired = ["--paired"] if len(files) > 1 else []
                _run(["predict", *map(str, files), *paired, "-o", str(tmp / f"{sample}{n}"),
                      *_common_args(models)])  # fmt: skip

        best: dict[str, common.Measured] = {}
        for _ in range(args.repeats):
            for label, fn in (("samplesheet, one run", together), ("three runs", separate)):
                m = common.measure(fn, quiet)
                print(f"{label}: {m.seconds:.1f} s (other jobs' CPU {m.foreign:.0%})", flush=True)
                if label not in best or m.seconds < best[label].seconds:
                    best[label] = m
    base = best["three runs"].seconds
    print()
    print(common.markdown_table(
        ["configuration", "s", "speed-up", "other jobs' CPU"],
        [(k, f"{m.seconds:.1f}", f"{base / m.seconds:.2f}x", f"{m.foreign:.0%}")
         for k, m in best.items()]))  # fmt: skip
    ratio = base / best["samplesheet, one run"].seconds
    print(f"\ntarget >= 1.3x: {common.verdict(ratio >= 1.3)} ({ratio:.2f}x); {quiet.summary()}")


if __name__ == "__main__":
    main()
