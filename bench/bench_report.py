"""Benchmark ``virnucpro report`` (``write_report``) on predict outputs of 10k and 1M records.

The output directory is synthesised in the real file formats (run.json, virnucpro_summary.tsv,
prediction_results.txt, chunks.tsv, viral_regions.tsv), seeded: 90% reads (150 nt, one chunk,
two scored frames) and 10% contigs (2,400 nt, five chunks of 500, two frames each), about 5%
of the records called virus, one region each. Each report is built in a fresh interpreter
(``python -m virnucpro report``), timed end to end, with its peak RSS (``VmHWM`` of the
child) and the RSS of an interpreter that only imported the report code, for the growth.

    python bench/bench_report.py [--records 10000,1000000] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import add_measurement_options, markdown_table, print_command, print_machine

READ_LEN, CONTIG_LEN, CHUNK = 150, 2_400, 500


def _score(x: float) -> str:
    return str(np.float32(x))


def synthesise(out: Path, n: int, seed: int = 1) -> dict[str, int]:
    """A predict output directory of ``n`` records (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    contig = rng.random(n) < 0.10
    viral = rng.random(n) < 0.05
    virus_calls = regions = frames = 0
    with (
        open(out / "virnucpro_summary.tsv", "w", buffering=1 << 20) as summary,
        open(out / "prediction_results.txt", "w", buffering=1 << 20) as predictions,
        open(out / "chunks.tsv", "w", buffering=1 << 20) as chunks,
        open(out / "viral_regions.tsv", "w", buffering=1 << 20) as region_tsv,
    ):
        summary.write(
            "id\tlength\tchunks\tframes_kept\tframes_scored\tviral_chunks\tbest_virus_score\tcall"
            "\tviral_fraction\tscore\tconfidence\tviral_regions\n"
        )
        predictions.write("Sequence_ID\tPrediction\tscore1\tscore2\n")
        chunks.write("record\tchunk\tstart\tend\tframes_scored\tvirus_score\tothers_score\tcall\n")
        region_tsv.write(
            "record\tregion\tstart\tend\tlength\tchunks\tmean_virus_score\tmax_virus_score\n"
        )
        for i in range(n):
            rid = f"rec{i}"
            length = CONTIG_LEN if contig[i] else READ_LEN
            n_chunks = 5 if contig[i] else 1
            high = 0.7 + 0.3 * rng.random() if viral[i] else 0.3 * rng.random()
            viral_chunks, best = 0, 0.0
            lines, chunk_lines = [], []
            for c in range(1, n_chunks + 1):
                start = (c - 1) * CHUNK if contig[i] else 0
                end = min(start + CHUNK, length)
                v = [min(1.0, max(0.0, high + 0.1 * (rng.random() - 0.5))) for _ in range(2)]
                for f, p in zip(("F1", "R1"), v, strict=True):
                    label = "virus" if p > 1 - p else "others"
                    lines.append(f"{rid}_chunk_{c}{f}\t{label}\t{_score(1 - p)}\t{_score(p)}\n")
                call = "virus" if max(v) >= 1 - min(v) else "others"
                viral_chunks += call == "virus"
                best = max(best, *v)
                chunk_lines.append(f"{rid}\t{c}\t{start}\t{end}\t2\t{_score(max(v))}\t"
                                   f"{_score(1 - min(v))}\t{call}\n")  # fmt: skip
            frames += len(lines)
            predictions.writelines(lines)
            chunks.writelines(chunk_lines)
            call = "virus" if viral[i] else "others"
            virus_calls += viral[i]
            has_region = bool(viral[i])
            if has_region:
                regions += 1
                region_tsv.write(f"{rid}\t{rid}_region_1\t0\t{length}\t{length}\t{n_chunks}\t"
                                 f"{_score(high)}\t{_score(best)}\n")  # fmt: skip
            confidence = "high" if abs(high - 0.5) > 0.3 else "medium"
            summary.write(
                f"{rid}\t{length}\t{n_chunks}\t{2 * n_chunks}\t{2 * n_chunks}\t{viral_chunks}\t"
                f"{_score(best)}\t{call}\t{viral_chunks / n_chunks:.4f}\t{high:.4f}\t"
                f"{confidence}\t{int(has_region)}\n"
            )
    counts = {"input_records": n, "records_virus": int(virus_calls),
              "records_others": n - int(virus_calls), "frames_scored": frames,
              "viral_regions": regions}  # fmt: skip
    run = {
        "virnucpro_version": "bench", "command": "predict", "status": "complete",
        "created": "2026-01-01T00:00:00+00:00", "input": {"path": "synthetic.fq", "size": 0},
        "parameters": {"chunk_size": CHUNK}, "counts": counts,
        "models": {"esm2": {"name": "synthetic", "checksum": "-"}},
        "timings_s": {"total": 0.0},
    }  # fmt: skip
    (out / "run.json").write_text(json.dumps(run))
    return counts


_CHILD = """
import json, sys, time
from pathlib import Path
from virnucpro.report.render import write_report

def hwm_kib():  # this process image's own peak (ru_maxrss can carry the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
base = hwm_kib()
t = time.perf_counter()
if sys.argv[1] != "-":
    write_report(Path(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - t, "import_rss_kib": base,
                  "peak_rss_kib": hwm_kib()}))
"""


def report_once(folder: Path | None) -> dict:
    """Build the report of ``folder`` in a fresh interpreter; wall time includes start-up."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(folder) if folder else "-"],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ,
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["wall_s"] = time.perf_counter() - start
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", default="10000,1000000")
    add_measurement_options(parser)
    args = parser.parse_args()
    print_command("bench_report.py", args)
    print_machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(v) for v in args.records.split(",")]:
            folder = Path(tmp) / f"r{n}"
            t = time.perf_counter()
            counts = synthesise(folder, n)
            made = time.perf_counter() - t
            size = sum(p.stat().st_size for p in folder.iterdir())
            runs = [report_once(folder) for _ in range(args.repeats)]
            fastest = min(runs, key=lambda r: r["wall_s"])
            report_size = (folder / "report.html").stat().st_size
            print(f"{n} records: synthesised in {made:.1f} s ({size / 2**20:.0f} MiB of tables, "
                  f"{counts}); report {fastest}; report.html {report_size / 2**20:.1f} MiB",
                  flush=True)  # fmt: skip
            rows.append((
                f"{n:,}", f"{counts['records_virus']:,}", f"{size / 2**20:.0f}",
                f"{fastest['wall_s']:.1f}", f"{fastest['seconds']:.1f}",
                f"{fastest['peak_rss_kib'] / 1024:.0f}",
                f"{(fastest['peak_rss_kib'] - fastest['import_rss_kib']) / 1024:.0f}",
                f"{report_size / 2**20:.1f}",
            ))  # fmt: skip
            del counts
    print()
    print(markdown_table(["records", "virus records (table rows)", "input tables MiB",
                          "wall s (fresh process)", "write_report s", "peak RSS MiB",
                          "RSS growth over imports MiB", "report.html MiB"], rows))  # fmt: skip
    print(f"\nparent ru_maxrss {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
