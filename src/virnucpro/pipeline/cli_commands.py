"""CLI commands of the VirNucPro pipeline: ``translate`` and ``predict``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_pipeline_commands(sub, common: argparse.ArgumentParser, add_engine_options) -> None:
    translate = sub.add_parser(
        "translate", parents=[common], help="chunk reads/contigs and keep stop-free six-frame ORFs",
        description="Chunk every record (SPEC 1.1) and translate six frames (SPEC 1.2); writes "
        "OUT_DIR/{stem}_chunked{C}.fa, {stem}_identified_nucleotide.fa and "
        "{stem}_identified_protein.faa.",
    )
    translate.add_argument("input", type=Path, metavar="INPUT", help="FASTA/FASTQ, plain or gzip")
    translate.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUT_DIR")
    translate.add_argument("--chunk-size", type=int, choices=[300, 500], default=500)
    translate.set_defaults(handler=_cmd_translate)


def _cmd_translate(args) -> int:
    from virnucpro.pipeline.translate import translate_file

    args.output_dir.mkdir(parents=True, exist_ok=True)
    result = translate_file(args.input, args.output_dir, args.chunk_size)
    print(
        f"{result.records} records -> {result.chunks} chunks -> {result.frames_kept} frames kept "
        f"({result.chunks_without_frame} chunks without a stop-free frame, "
        f"{result.empty_records} empty records) in {args.output_dir}",
        file=sys.stderr,
    )
    return 0
