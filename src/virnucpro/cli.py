"""The ``virnucpro`` command line: a thin layer over the API and the pipeline."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import NoReturn

from virnucpro._version import __version__
from virnucpro.errors import VirnucproError

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 with the usage line: 2 means "partial result" for virnucpro."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _layers(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"layers must be integers such as -1 or 6,12: {text!r}"
        ) from None


NEGATIVE_LIST_OPTIONS = ("--layers",)


def glue_negative_values(argv: list[str]) -> list[str]:
    """``--layers -1,-2`` -> ``--layers=-1,-2``: argparse takes a value that starts with ``-``
    and is not a plain number (``-1,-2``) for an option and refuses the line."""
    out: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in NEGATIVE_LIST_OPTIONS:
            value = next(args, None)
            if value is not None and re.fullmatch(r"-\d[\d, -]*", value):
                out.append(f"{arg}={value}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        if arg == "--":
            out.append(arg)
            out.extend(args)
            break
        out.append(arg)
    return out


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument(
        "--devices",
        default="auto",
        help="auto (every visible GPU, else CPU), cpu, or GPU numbers such as 0,1,3",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        help="number of CPU workers with --devices cpu (threads are split between them; "
        "default: one single-threaded worker per core, as many as memory holds)",
    )
    g.add_argument(
        "--tokens-per-batch",
        type=int,
        default=None,
        help="tokens per batch: real tokens for ESM-2 (it packs sequences), padded slots for "
        "DNABERT-S (default 4096 on CPU, 16384 on GPU)",
    )
    g.add_argument(
        "--unit-tokens",
        type=int,
        default=None,
        help="tokens per work unit (default: about 1/16 of the job, 1 to 8 batches)",
    )
    g.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        default="auto",
        help="auto: fp32 on CPU, bf16 (or fp16) on GPU",
    )
    g.add_argument(
        "--max-retries",
        type=int,
        default=3,
        help="retries of a unit whose worker died; 0 reports its sequences missing",
    )
    g.add_argument(
        "--worker-timeout",
        type=float,
        default=900.0,
        help="seconds without a heartbeat before a busy worker is killed (0: never)",
    )
    g.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 1, no output) instead of writing a partial result",
    )
    g.add_argument(
        "--restart",
        action="store_true",
        help="discard the results of an earlier run in the output directory",
    )
    g.add_argument(
        "--retry-failed",
        action="store_true",
        help="compute again the sequences an earlier run isolated as failed (failed.tsv)",
    )
    g.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local worker processes, or Ray actors (pip install virnucpro[ray])",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        metavar="auto|HOST:PORT",
        help="Ray cluster to join with --backend ray (default: start a local one)",
    )
    g.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="compute only stride shard I of N (job arrays); then `virnucpro merge`",
    )
    g.add_argument(
        "--keep-work",
        action="store_true",
        help="keep OUT_DIR/work (the sequence index; predict: every stage intermediate) after "
        "a complete run (default: removed, see README 'Disk space')",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="virnucpro",
        description="Viral sequence identification (VirNucPro) and protein/DNA language-model "
        "embeddings on every device of a machine.",
    )
    parser.add_argument("--version", action="version", version=f"virnucpro {__version__}")
    common = _Parser(add_help=False)
    verbosity = common.add_mutually_exclusive_group()
    verbosity.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar, errors only"
    )
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    embed = sub.add_parser(
        "embed",
        parents=[common],
        help="FASTA in, one validated HDF5 of embeddings out",
        description="Embed protein (ESM-2) or DNA (DNABERT-S) sequences into "
        "OUT_DIR/embeddings.h5. Exit 0: complete; 2: partial (see missing.tsv "
        "and failed.tsv); 1: error.",
    )
    embed.add_argument(
        "inputs", nargs="+", type=Path, metavar="INPUT", help="FASTA/FASTQ files, plain or gzip"
    )
    embed.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUT_DIR")
    embed.add_argument(
        "--model",
        default="esm2_t36_3B_UR50D",
        help="fair-esm name, hub id, Hugging Face folder or fair-esm .pt "
        "(default esm2_t36_3B_UR50D); DNABERT-S by hub id or folder",
    )
    embed.add_argument(
        "--layers",
        type=_layers,
        default=(-1,),
        help="layers to pool, comma separated, negative from the end (default -1)",
    )
    embed.add_argument("--per-token", action="store_true", help="also store per-residue vectors")
    from virnucpro.pipeline.cli_commands import add_models_dir_option

    add_models_dir_option(embed)
    _add_engine_options(embed)
    embed.set_defaults(handler=_cmd_embed)

    merge = sub.add_parser(
        "merge",
        parents=[common],
        help="merge the --shard I/N runs of OUT_DIR",
        description="Merge and validate the shards computed with --shard I/N "
        "into OUT_DIR/embeddings.h5; names the shards that are missing.",
    )
    merge.add_argument("output_dir", type=Path, metavar="OUT_DIR")
    merge.add_argument(
        "--strict", action="store_true", help="fail instead of writing a partial result"
    )
    merge.set_defaults(handler=_cmd_merge)

    from virnucpro.pipeline.cli_commands import add_pipeline_commands

    add_pipeline_commands(sub, common, _add_engine_options)
    from virnucpro.training.make_dataset_cli import add_make_dataset_command

    add_make_dataset_command(sub, common)
    from virnucpro.training.train_cli import add_training_commands

    add_training_commands(sub, common, _add_engine_options)
    from virnucpro.models.download_cli import add_download_commands

    add_download_commands(sub, common)
    return parser


def engine_kwargs(args) -> dict:
    return {
        "world_size": args.workers,
        "devices": args.devices,
        "tokens_per_batch": args.tokens_per_batch,
        "unit_tokens": args.unit_tokens,
        "max_retries": args.max_retries,
        "worker_timeout": args.worker_timeout or None,
        "strict": args.strict,
        "restart": args.restart,
        "quiet": args.quiet,
        "backend": args.backend,
        "ray_address": args.ray_address,
        "shard": args.shard,
        "retry_failed": args.retry_failed,
        "keep_work": args.keep_work,
    }


def _cmd_embed(args) -> int:
    from virnucpro.api import embed, resolve_model
    from virnucpro.io.paths import require_input_files

    require_input_files(args.inputs)  # before the model, which may take a download
    spec = resolve_model(
        str(args.model),
        layers=args.layers,
        per_token=args.per_token,
        precision=args.precision,
        flag="--model",
        models_dir=args.models_dir,
    )
    result = embed(args.inputs, args.output_dir, spec, **engine_kwargs(args))
    return report_result(result, args.output_dir)


def _cmd_merge(args) -> int:
    from virnucpro.api import merge

    result = merge(args.output_dir, strict=args.strict, quiet=args.quiet)
    return report_result(result, args.output_dir)


def report_result(result, out_dir: Path) -> int:
    """Print the closing line(s) of an engine run and return its exit code."""
    if result.output is None:  # a shard run: nothing merged yet
        print(
            f"shard done: {result.embedded} of {result.expected} sequences of this shard "
            f"embedded in {out_dir}; when every shard is done, run `virnucpro merge {out_dir}`",
            file=_problems if result.exit_code else sys.stderr,
        )
        return result.exit_code
    if result.exit_code == EXIT_OK:
        print(
            f"embedded {result.embedded} of {result.expected} sequences -> {result.output}",
            file=sys.stderr,
        )
        return EXIT_OK
    where = []
    if result.missing:
        where.append(f"{result.missing} missing (listed in {out_dir / 'missing.tsv'})")
    if result.failed:
        where.append(f"{result.failed} failed (listed in {out_dir / 'failed.tsv'})")
    ranks = (
        f"; failed rank(s): {', '.join(map(str, result.failed_ranks))}"
        if result.failed_ranks
        else ""
    )
    problem(
        f"warning: partial result: {result.embedded} of {result.expected} sequences embedded -> "
        f"{result.output}; {'; '.join(where)}{ranks}"
    )
    return EXIT_PARTIAL


def _configure_logging(args) -> None:
    level = logging.ERROR if args.quiet else logging.INFO if args.verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.setLevel(level)
    root = logging.getLogger("virnucpro")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)  # run.log records INFO whatever the terminal shows
    root.propagate = False
    if not args.verbose:  # download retries are noise; our own error names what is missing
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


_problems = sys.stderr  # where lines that explain a non-zero exit status go, even with -q


@contextlib.contextmanager
def _errors_only(quiet: bool):
    """``-q``: the commands' own lines (closing summaries, notices) are dropped. What explains
    a non-zero exit status still shows: errors (printed by ``main`` after this block), the
    partial-result line (``problem``) and the log handler's errors (it keeps the real stderr)."""
    global _problems
    _problems = sys.stderr
    if not quiet:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
        yield


def problem(message: str) -> None:
    """Print the line that explains an exit status 2 (partial result); shown even with -q."""
    print(message, file=_problems)


def _terminate(signum, _frame) -> None:
    raise KeyboardInterrupt(signum)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(glue_negative_values(sys.argv[1:] if argv is None else argv))
    _configure_logging(args)
    from virnucpro.engine.interrupted import Interrupted

    signal.signal(signal.SIGTERM, _terminate)  # outside the worker phase: stop like Ctrl-C
    from virnucpro.engine.claim import command_claim

    try:
        with _errors_only(getattr(args, "quiet", False)), command_claim(args):  # OUT is ours
            return args.handler(args)
    except Interrupted as exc:
        work = getattr(exc, "work_dir", "the output directory")
        print(
            f"interrupted by {exc}; committed work is kept in {work}. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return exc.exit_code
    except VirnucproError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        if args.debug:
            raise
        signum = exc.args[0] if exc.args else signal.SIGINT
        print(
            f"interrupted by {signal.Signals(signum).name}; committed work is kept. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return 128 + signum
    except Exception as exc:  # noqa: BLE001
        if args.debug:
            raise
        from virnucpro.io.diskerrors import disk_error, is_disk_error

        if is_disk_error(exc):  # a full or read-only disk outside the engine: one line
            print(f"error: {disk_error(exc, getattr(args, 'output_dir', None))}", file=sys.stderr)
            return EXIT_ERROR
        print(
            f"error: unexpected {type(exc).__name__}: {exc} (this is a bug; re-run with --debug "
            "for the traceback and report it)",
            file=sys.stderr,
        )
        return EXIT_ERROR
