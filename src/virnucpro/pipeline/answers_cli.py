"""CLI of the answer layer: predict inputs (single, paired, samplesheet), record call, report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from virnucpro.errors import InputError
from virnucpro.pipeline.record_call import CallRule


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number within [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number within [0, 1], got {text!r}")
    return value


def add_call_options(parser: argparse.ArgumentParser) -> None:
    defaults = CallRule()
    g = parser.add_argument_group("record call (docs/FORMATS.md)")
    g.add_argument(
        "--record-threshold",
        type=_fraction,
        default=defaults.threshold,
        help="a record of several chunks is virus when its confidence-weighted chunk score "
        f"reaches this (default {defaults.threshold})",
    )
    g.add_argument(
        "--min-viral-fraction",
        type=_fraction,
        default=defaults.min_viral_fraction,
        help="... and at least this share of its scored chunks is viral "
        f"(default {defaults.min_viral_fraction})",
    )


def call_rule(args: argparse.Namespace) -> CallRule:
    return CallRule(threshold=args.record_threshold, min_viral_fraction=args.min_viral_fraction)


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """INPUT (one file, or R1 R2 with --paired) or --samplesheet."""
    parser.add_argument(
        "inputs",
        nargs="*",
        type=Path,
        metavar="INPUT",
        help="FASTA/FASTQ, plain or gzip; R1 R2 with --paired; none with --samplesheet",
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="INPUT is R1 R2: mates matched by order and name, one call per pair in pairs.tsv",
    )
    parser.add_argument(
        "--samplesheet",
        type=Path,
        default=None,
        metavar="CSV",
        help="nf-core sheet (sample,fastq_1,fastq_2): every sample in one run, outputs under "
        "OUT_DIR/samples/<sample>/, counts in OUT_DIR/samples.tsv",
    )


def check_inputs(args: argparse.Namespace) -> None:
    """One line naming what is wrong with the INPUT / --paired / --samplesheet combination."""
    n = len(args.inputs)
    if args.samplesheet is not None:
        if n or args.paired:
            raise InputError("--samplesheet takes no INPUT and no --paired (the sheet says both)")
    elif args.paired and n != 2:
        raise InputError(f"--paired needs two inputs, R1 and R2; got {n}")
    elif not args.paired and n != 1:
        raise InputError(f"expected one INPUT (or R1 R2 with --paired); got {n}")


def pair_counts(counts: dict) -> str:
    """``; N pairs: ...`` for the closing line of a paired run, else empty."""
    if "pairs" not in counts:
        return ""
    return (
        f"; {counts['pairs']} pairs: {counts['pairs_virus']} virus, {counts['pairs_others']} "
        f"others, {counts['pairs_no_call']} no call, {counts['pairs_discordant']} with mates "
        "that disagree"
    )


def add_report_command(sub, common: argparse.ArgumentParser) -> None:
    report = sub.add_parser(
        "report",
        parents=[common],
        help="rebuild OUT_DIR/report.html from the files of a predict run",
        description="Rebuild OUT_DIR/report.html and OUT_DIR/plots/ from run.json, the summary "
        "and the score tables of a finished `virnucpro predict` output directory.",
    )
    report.add_argument("output_dir", type=Path, metavar="OUT_DIR")
    report.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    from virnucpro.report.render import write_report

    path = write_report(args.output_dir)
    print(f"report -> {path}", file=sys.stderr)
    return 0
