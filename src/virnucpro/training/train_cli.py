"""The ``virnucpro train`` and ``virnucpro evaluate`` sub-commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from virnucpro.pipeline.predict import DEFAULT_DNABERT, DEFAULT_ESM


def add_training_commands(sub, common: argparse.ArgumentParser, add_engine_options) -> None:
    p = sub.add_parser(
        "train",
        parents=[common],
        help="train a VirNucPro classifier on a make-dataset DATA_DIR",
        description="Embed DATA_DIR's frames with DNABERT-S and ESM-2 on the engine (resumable "
        "stages in MODEL_DIR/stages/), train the VirNucPro MLP as the original did (early "
        "stopping on the validation split, best weights restored) and write "
        "MODEL_DIR/classifier.safetensors, training_log.tsv, metrics.json, plots/ and run.json "
        "(docs/TRAINING.md). A killed run resumes from its last completed epoch.",
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    p.add_argument("-o", "--output-dir", type=Path, required=True, metavar="MODEL_DIR")
    p.add_argument("--esm-model", default=DEFAULT_ESM, help=f"ESM-2 model (default {DEFAULT_ESM})")
    p.add_argument(
        "--dnabert-model", default=DEFAULT_DNABERT, help=f"DNABERT-S (default {DEFAULT_DNABERT})"
    )
    p.add_argument("--epochs", type=int, default=200, help="at most this many epochs (200)")
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (5)")
    p.add_argument("--batch-size", type=int, default=32, help="rows per SGD step (32)")
    p.add_argument("--lr", type=float, default=2e-4, help="SGD learning rate (2e-4)")
    p.add_argument("--seed", type=int, default=42, help="init, shuffling and dropout seed (42)")
    add_engine_options(p)
    p.set_defaults(handler=_cmd_train)
    add_evaluate_command(sub, common, add_engine_options)


def _cmd_train(args) -> int:
    from virnucpro.cli import engine_kwargs
    from virnucpro.training.train import TrainOptions, describe_result, run_train
    from virnucpro.training.trainer import Hyperparameters

    options = TrainOptions(
        esm_model=args.esm_model,
        dnabert_model=args.dnabert_model,
        hyper=Hyperparameters(
            epochs=args.epochs,
            patience=args.patience,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
        ),
        precision=args.precision,
        engine=engine_kwargs(args),
    )
    result = run_train(args.data_dir, args.output_dir, options)
    print(describe_result(result), file=sys.stderr)
    return result.exit_code


def add_evaluate_command(sub, common: argparse.ArgumentParser, add_engine_options) -> None:
    from virnucpro.pipeline.answers_cli import add_call_options
    from virnucpro.pipeline.cli_commands import add_model_options

    p = sub.add_parser(
        "evaluate",
        parents=[common],
        help="a classifier's metrics on labelled files or a make-dataset DATA_DIR",
        description="Run predict's pipeline on labelled inputs (--viral/--other files, or the "
        "frames of a DATA_DIR split) and write EVAL_DIR/metrics.json (frame, chunk and record "
        "level), predictions.tsv (id, level, label, score, call) and plots/roc.png, pr.png "
        "(docs/TRAINING.md).",
    )
    p.add_argument("data_dir", nargs="?", type=Path, default=None, metavar="DATA_DIR")
    p.add_argument("--viral", nargs="+", type=Path, default=[], metavar="FILE")
    p.add_argument("--other", nargs="+", type=Path, default=[], metavar="FILE")
    p.add_argument(
        "--split",
        choices=["validation", "train", "all"],
        default="validation",
        help="with DATA_DIR: which frames to score (default validation)",
    )
    p.add_argument("-o", "--output-dir", type=Path, required=True, metavar="EVAL_DIR")
    add_model_options(p)
    add_call_options(p)
    add_engine_options(p)
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from virnucpro.errors import InputError
    from virnucpro.pipeline.cli_commands import predict_options
    from virnucpro.training.evaluate import run_evaluate

    if args.data_dir is not None:
        if args.viral or args.other:
            raise InputError("give either DATA_DIR or --viral/--other files, not both")
        from virnucpro.training.train import load_dataset

        trained = load_dataset(args.data_dir)["chunk_size"]
        if args.chunk_size is not None and args.chunk_size != trained:
            raise InputError(
                f"--chunk-size {args.chunk_size} conflicts with {args.data_dir}, made with "
                f"{trained}-nt chunks"
            )
        args.chunk_size = trained
        options = predict_options(args)
        report = run_evaluate(args.output_dir, options, data_dir=args.data_dir, split=args.split)
    else:
        if not (args.viral and args.other):
            raise InputError("evaluate needs --viral FILE... and --other FILE... (or DATA_DIR)")
        if args.classifier is None:
            raise InputError("evaluate needs --classifier (a MODEL_DIR or a classifier file)")
        options = predict_options(args)
        inputs = [("viral", p) for p in args.viral] + [("other", p) for p in args.other]
        report = run_evaluate(args.output_dir, options, inputs=inputs)
    if "shard" in report:
        print(f"shard {report['shard']} done in {args.output_dir}", file=sys.stderr)
        return 0
    parts = []
    for level in ("frame", "chunk", "record"):
        m = report[level]
        acc = "NA" if m["accuracy"] is None else f"{m['accuracy']:.4f}"
        parts.append(f"{level} accuracy {acc} ({m['counts']['total']})")
    print(f"{'; '.join(parts)} -> {args.output_dir / 'metrics.json'}", file=sys.stderr)
    return 0
