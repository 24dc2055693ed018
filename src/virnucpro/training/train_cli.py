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
