"""Benchmark ``make-dataset`` against ``translate`` on the real genome, in chunks per second.

The C. diphtheriae genome (2.46 Mbp) is cut into records of ``--record-kb`` kb. Two copies
with different ids form the two classes (FASTA run); for the GenBank run the viral copy is
written with Biopython as GenBank with a CDS /translation for every ATG..stop ORF of >= 80
codons on both strands (setup, not timed). Timed, in one process pinned to one core:
``translate_file`` on both FASTA copies, ``make_dataset`` on FASTA + FASTA and on GenBank +
FASTA. Rates are input chunks per second over both files.

    python bench/bench_make_dataset.py [--chunk-size 300] [--record-kb 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import common

from virnucpro.io.fasta import read_records
from virnucpro.pipeline.chunking import reverse_complement, translate
from virnucpro.pipeline.translate import translate_file
from virnucpro.training.inputs import from_flags
from virnucpro.training.make_dataset import DatasetOptions, make_dataset


def genome_records(record_kb: int, prefix: str) -> list[tuple[str, str]]:
    seq = next(read_records(common.GENOME)).seq
    size = record_kb * 1000
    return [(f"{prefix}_{i // size}", seq[i : i + size]) for i in range(0, len(seq), size)]


def orfs(seq: str, min_codons: int = 80) -> list[tuple[int, int, int, str]]:
    """(start, end, strand, translation) of every ATG..stop ORF on both strands."""
    found = []
    for strand, s in ((1, seq), (-1, reverse_complement(seq))):
        for frame in range(3):
            pos = 0
            for piece in translate(s, frame).split("*")[:-1]:
                m = piece.find("M")
                if m >= 0 and len(piece) - m >= min_codons:
                    a, b = frame + 3 * (pos + m), frame + 3 * (pos + len(piece) + 1)
                    start, end = (a, b) if strand == 1 else (len(seq) - b, len(seq) - a)
                    found.append((start, end, strand, piece[m:]))
                pos += len(piece) + 1
    return found


def write_genbank(path: Path, records: list[tuple[str, str]]) -> int:
    """Write ``records`` as GenBank with ORF CDS features; return the number of CDS."""
    from Bio import SeqIO
    from Bio.Seq import Seq
    from Bio.SeqFeature import FeatureLocation, SeqFeature
    from Bio.SeqRecord import SeqRecord

    out, cds = [], 0
    for rid, seq in records:
        rec = SeqRecord(Seq(seq), id=rid, name=rid, description="genome slice")
        rec.annotations["molecule_type"] = "DNA"
        for start, end, strand, aa in orfs(seq):
            feature = SeqFeature(FeatureLocation(start, end, strand=strand), type="CDS")
            feature.qualifiers["translation"] = [aa]
            rec.features.append(feature)
            cds += 1
        out.append(rec)
    with open(path, "w") as handle:
        SeqIO.write(out, handle, "genbank")
    return cds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-size", type=int, default=300)
    parser.add_argument("--record-kb", type=int, default=100)
    parser.add_argument("--all-cores", action="store_true", help="do not pin to one core")
    common.add_measurement_options(parser)
    args = parser.parse_args()
    info = common.print_machine()
    common.print_command("bench_make_dataset.py", args)
    if not args.all_cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    quiet = common.Quiet(max_wait=args.max_wait)
    c = args.chunk_size
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        viral = common.write_fasta(tmp / "viral.fa", genome_records(args.record_kb, "V"))
        other = common.write_fasta(tmp / "other.fa", genome_records(args.record_kb, "O"))
        cds = write_genbank(tmp / "viral.gb", genome_records(args.record_kb, "G"))
        options = DatasetOptions(chunk_size=c)
        runs = {
            "translate_file (both FASTA copies)": (
                lambda: sum(
                    translate_file(f, tmp / "translated", c).chunks for f in (viral, other)
                ),
                2,
            ),
            "make_dataset FASTA + FASTA": (
                lambda: _chunks(make_dataset(from_flags([viral], [other]), tmp / "d1", options)),
                2,
            ),
            "make_dataset GenBank + FASTA": (
                lambda: _chunks(
                    make_dataset(from_flags([tmp / "viral.gb"], [other]), tmp / "d2", options)
                ),
                2,
            ),
        }
        best: dict[str, common.Measured] = {}
        for _ in range(args.repeats):  # interleaved
            for name, (fn, _copies) in runs.items():
                m = common.measure(fn, quiet)
                if name not in best or m.seconds < best[name].seconds:
                    best[name] = m
        frames = make_dataset(from_flags([tmp / "viral.gb"], [other]), tmp / "d3", options)
    base = best["translate_file (both FASTA copies)"]
    base_rate = base.result / base.seconds
    rows = []
    for name, m in best.items():
        rate = m.result / m.seconds
        rows.append(
            (name, f"{m.result:,}", f"{m.seconds:.3f}", f"{rate:,.0f}", f"{rate / base_rate:.2f}",
             f"{m.foreign:.0%}")
        )  # fmt: skip
    print(
        f"genome {common.GENOME.name} in {args.record_kb} kb records, C={c}, {cds:,} ORF CDS; "
        f"GenBank dataset: {frames['counts']['frames']:,} frames "
        f"({frames['frames_per_class']:,} per class)"
    )
    headers = ("run", "chunks", "best s", "chunks/s", "vs translate", "other jobs' CPU")
    print(common.markdown_table(headers, rows))
    for name in ("make_dataset FASTA + FASTA", "make_dataset GenBank + FASTA"):
        ok = best[name].result / best[name].seconds >= base_rate
        print(f"{name}: target (>= translate's chunks/s) {common.verdict(ok)}")
    print(quiet.summary())
    print(f"load average at start: {info['load_average_1min']}")


def _chunks(description: dict) -> int:
    return sum(i["chunks"] for i in description["inputs"])


if __name__ == "__main__":
    main()
