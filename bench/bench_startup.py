"""Start-up time and memory of the commands that do not compute, and translate on many reads.

Each command runs ``--repeats`` times in a fresh process under ``/usr/bin/time`` (wall
seconds, peak RSS); the fastest run counts. ``python -c 'import torch'`` is the reference
for what these commands paid before they stopped importing torch. ``--reads`` simulated
150 nt reads of a real genome are then translated by ``virnucpro translate`` and, when it is
installed, by ``seqkit translate -f 6`` (six frames only: no chunking, no stop-free filter,
no nucleotide file; a reference for the cost of reading and translating, not the same job).

    python bench/bench_startup.py [--reads 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import bench_translate
import common


def timed(command: list[str], repeats: int) -> tuple[float, float]:
    """(best wall seconds, peak RSS MiB of that run)."""
    best = None
    for _ in range(repeats):
        done = subprocess.run(["/usr/bin/time", "-f", "%e %M", *command], capture_output=True,
                              text=True)  # fmt: skip
        if done.returncode != 0:
            raise SystemExit(f"{command} failed: {done.stderr[-500:]}")
        wall, kib = done.stderr.strip().splitlines()[-1].split()
        if best is None or float(wall) < best[0]:
            best = (float(wall), int(kib) / 1024)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    common.print_command("bench_startup.py", args)
    common.print_machine()
    py = [sys.executable]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        tiny = common.write_fasta(tmp / "one.fa", [("r1", "ATGAAACCCGGGTTTTAAGC" * 10)])
        commands = {
            "python -c 'import torch' (reference)": py + ["-c", "import torch"],
            "virnucpro --version": py + ["-m", "virnucpro", "--version"],
            "virnucpro --help": py + ["-m", "virnucpro", "--help"],
            "virnucpro translate (1 read)": py + ["-m", "virnucpro", "translate", str(tiny), "-o",
                                                  str(tmp / "t1"), "-q"],
            "virnucpro merge --help": py + ["-m", "virnucpro", "merge", "--help"],
            "virnucpro report --help": py + ["-m", "virnucpro", "report", "--help"],
        }  # fmt: skip
        if shutil.which("seqkit"):
            commands["seqkit version"] = ["seqkit", "version"]
        rows = []
        for label, command in commands.items():
            wall, rss = timed(command, args.repeats)
            print(f"{label}: {wall:.2f} s, {rss:.0f} MiB", flush=True)
            rows.append((label, f"{wall:.2f}", f"{rss:.0f}"))
        print()
        print(common.markdown_table(["command", "wall s", "peak RSS MiB"], rows))
        if not args.reads:
            return
        reads = bench_translate.simulate_reads(common.GENOME, args.reads, 150, seed=7)
        fasta = common.write_fasta(tmp / "reads.fa", reads)
        del reads
        ours = ["-m", "virnucpro", "translate", str(fasta), "-o", str(tmp / "tr"), "-q"]
        big = {"virnucpro translate": py + ours}
        if shutil.which("seqkit"):
            big["seqkit translate -f 6"] = ["seqkit", "translate", "-f", "6", "-j", "1",
                                            str(fasta), "-o", str(tmp / "seqkit.faa")]  # fmt: skip
        rows = []
        for label, command in big.items():
            wall, rss = timed(command, 1)
            print(f"{label} on {args.reads} reads: {wall:.1f} s, {rss:.0f} MiB", flush=True)
            rows.append((label, f"{args.reads:,}", f"{wall:.1f}", f"{rss:.0f}"))
        print()
        print(common.markdown_table(["command", "reads", "wall s", "peak RSS MiB"], rows))


if __name__ == "__main__":
    main()
