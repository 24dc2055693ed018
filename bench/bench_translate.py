"""Benchmark ``translate_file`` on simulated 500 bp reads from a real bacterial genome.

Reads are drawn at random positions on both strands (seeded), written to a temporary FASTA,
then translated; the pure reference (``chunking``) runs on a subset for a speed ratio. The
process is pinned to one CPU core by default.

    python bench/bench_translate.py [--reads 20000] [--length 500] [--chunk-size 500]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from virnucpro.io.fasta import read_records
from virnucpro.pipeline.chunking import chunk_record, reverse_complement, six_frames
from virnucpro.pipeline.translate import translate_file

GENOME = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/GCF_001457455.1_NCTC11397_genomic.fna.gz"
)


def simulate_reads(genome: Path, count: int, length: int, seed: int) -> list[tuple[str, str]]:
    """Draw ``count`` reads of ``length`` bases at random positions and strands of ``genome``."""
    contigs = [r.seq for r in read_records(genome) if len(r.seq) >= length]
    sizes = np.array([len(s) - length + 1 for s in contigs], dtype=np.float64)
    rng = np.random.default_rng(seed)
    which = rng.choice(len(contigs), size=count, p=sizes / sizes.sum())
    reads = []
    for i, c in enumerate(which.tolist()):
        start = int(rng.integers(0, len(contigs[c]) - length + 1))
        seq = contigs[c][start : start + length]
        if rng.random() < 0.5:
            seq = reverse_complement(seq)
        reads.append((f"read_{i} contig={c} pos={start}", seq))
    return reads


def reference_rate(path: Path, chunk_size: int, limit: int) -> float:
    """Reads per second of the pure reference (reading, chunking, translation, formatting)."""
    start = time.perf_counter()
    lines: list[str] = []
    done = 0
    for rec in read_records(path):
        for chunk_id, chunk in chunk_record(rec.id, rec.seq, chunk_size):
            lines.append(f">{chunk_id}\n{chunk}\n")
            for frame_id, protein, nucleotide in six_frames(chunk_id, chunk):
                lines.append(f">{frame_id}\n{protein}\n>{frame_id}\n{nucleotide}\n")
        done += 1
        if done == limit:
            break
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--chunk-size", type=int, default=500)
    parser.add_argument("--reference-reads", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    args = parser.parse_args()
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    reads = simulate_reads(GENOME, args.reads, args.length, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        fasta = Path(tmp) / "reads.fa"
        fasta.write_text("".join(f">{h}\n{s}\n" for h, s in reads))
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = translate_file(fasta, Path(tmp) / "out", args.chunk_size)
            best = min(best, time.perf_counter() - start)
        fast = args.reads / best
        ref = reference_rate(fasta, args.chunk_size, args.reference_reads)
    print(
        f"{args.reads} reads x {args.length} bp, C={args.chunk_size}: "
        f"{result.chunks} chunks, {result.frames_kept} frames kept, "
        f"{result.chunks_without_frame} chunks without frame"
    )
    print(f"translate_file: {fast:,.0f} reads/s (best of {args.repeats}, {best:.3f} s)")
    print(f"reference:      {ref:,.0f} reads/s on {args.reference_reads} reads")
    print(f"speed-up:       {fast / ref:.1f}x")


if __name__ == "__main__":
    main()
