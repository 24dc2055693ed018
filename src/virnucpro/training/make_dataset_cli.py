"""The ``virnucpro make-dataset`` sub-command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from virnucpro.errors import InputError
from virnucpro.pipeline.chunking import chunk_size_arg


def add_make_dataset_command(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "make-dataset",
        parents=[common],
        help="balanced, record-split training frames from labelled GenBank/FASTA files",
        description="Chunk and translate labelled genomes into training frames (GenBank: the "
        "original rule, frames found in a CDS /translation; FASTA/FASTQ: every stop-free "
        "frame), balance the classes over their groups and split by record. Writes "
        "DATA_DIR/frames_nucleotide.fa, frames_protein.faa, dataset.tsv, dataset.json and "
        "skipped.tsv (docs/TRAINING.md). Exit 0: written; 1: error (nothing written).",
    )
    p.add_argument("--viral", nargs="+", type=Path, default=[], metavar="FILE")
    p.add_argument("--other", nargs="+", type=Path, default=[], metavar="FILE")
    p.add_argument(
        "--manifest",
        type=Path,
        default=None,
        metavar="TSV",
        help="instead of --viral/--other: tab-separated path, label (viral|other), group",
    )
    p.add_argument("-o", "--output-dir", type=Path, required=True, metavar="DATA_DIR")
    p.add_argument(
        "--chunk-size", type=chunk_size_arg, default=500, metavar="N", help="50 to 2000 (500)"
    )
    p.add_argument("--seed", type=int, default=42, help="sampling and split seed (42)")
    p.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="share of each class's frames held out, whole records at a time (0.1)",
    )
    p.add_argument(
        "--max-per-class",
        type=int,
        default=None,
        metavar="N",
        help="at most N frames per class (default: as many as the smaller class has)",
    )
    p.set_defaults(handler=_cmd_make_dataset)


def _cmd_make_dataset(args) -> int:
    from virnucpro.training.inputs import from_flags, read_manifest
    from virnucpro.training.make_dataset import DatasetOptions, make_dataset

    if args.manifest is not None:
        if args.viral or args.other:
            raise InputError("give either --manifest or --viral/--other, not both")
        inputs = read_manifest(args.manifest)
    elif args.viral and args.other:
        inputs = from_flags(args.viral, args.other)
    else:
        raise InputError("make-dataset needs --viral FILE... and --other FILE... (or --manifest)")
    options = DatasetOptions(
        chunk_size=args.chunk_size,
        seed=args.seed,
        validation_fraction=args.validation_fraction,
        max_per_class=args.max_per_class,
    )
    d = make_dataset(inputs, args.output_dir, options)
    c = d["counts"]
    if not args.quiet:
        print(
            f"{c['records']} records -> {c['frames']} frames ({d['frames_per_class']} per "
            f"class; train {c['by_split']['train']['total']}, validation "
            f"{c['by_split']['validation']['total']}); {c['records_skipped']} records gave no "
            f"frame, {c['records_not_sampled']} not sampled (see skipped.tsv) -> "
            f"{args.output_dir}",
            file=sys.stderr,
        )
    return 0
