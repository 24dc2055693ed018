"""``predict`` options of the answer layer: the record call parameters."""

from __future__ import annotations

import argparse

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
