"""CLI commands of the VirNucPro pipeline: ``translate`` and ``predict``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from virnucpro.pipeline.answers_cli import (
    add_call_options,
    add_input_options,
    add_report_command,
    call_rule,
    check_inputs,
    pair_counts,
)
from virnucpro.pipeline.chunking import chunk_size_arg


def add_models_dir_option(parser: argparse.ArgumentParser) -> None:
    """``--models-dir DIR``: every model by name from a `virnucpro download --dest` folder."""
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="take every model named (by default name too) from DIR, a folder written by "
        "`virnucpro download --dest DIR`, verified, without network (default $VIRNUCPRO_MODELS)",
    )


def add_pipeline_commands(sub, common: argparse.ArgumentParser, add_engine_options) -> None:
    translate = sub.add_parser(
        "translate",
        parents=[common],
        help="chunk reads/contigs and keep stop-free six-frame ORFs",
        description="Chunk every record (SPEC 1.1) and translate six frames (SPEC 1.2); writes "
        "OUT_DIR/{stem}_chunked{C}.fa, {stem}_identified_nucleotide.fa and "
        "{stem}_identified_protein.faa.",
    )
    translate.add_argument("input", type=Path, metavar="INPUT", help="FASTA/FASTQ, plain or gzip")
    translate.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUT_DIR")
    translate.add_argument(
        "--chunk-size",
        type=chunk_size_arg,
        default=500,
        metavar="N",
        help="chunk length, 50 to 2000 (default 500)",
    )
    translate.set_defaults(handler=_cmd_translate)
    add_predict_command(sub, common, add_engine_options)
    add_selfcheck_command(sub, common, add_engine_options)
    add_report_command(sub, common)


def _cmd_translate(args) -> int:
    from virnucpro.io.paths import require_input_files
    from virnucpro.pipeline.translate import translate_file

    require_input_files([args.input])
    args.output_dir.mkdir(parents=True, exist_ok=True)
    result = translate_file(args.input, args.output_dir, args.chunk_size)
    print(
        f"{result.records} records -> {result.chunks} chunks -> {result.frames_kept} frames kept "
        f"({result.chunks_without_frame} chunks without a stop-free frame, "
        f"{result.empty_records} empty records) in {args.output_dir}",
        file=sys.stderr,
    )
    return 0


def add_predict_command(sub, common: argparse.ArgumentParser, add_engine_options) -> None:
    predict = sub.add_parser(
        "predict",
        parents=[common],
        help="the VirNucPro pipeline: which reads/contigs are viral",
        description="Chunk, translate six frames, embed nucleotides with DNABERT-S and proteins "
        "with ESM-2, join by id, classify with the VirNucPro MLP. Writes the original "
        "prediction_results.txt and prediction_results_highestscore.csv, plus "
        "virnucpro_summary.tsv, viral.fna, skipped.tsv and run.json. Exit 0: complete; "
        "2: some frames could not be scored (see skipped.tsv); 1: error.",
    )
    add_input_options(predict)
    predict.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUT_DIR")
    add_model_options(predict)
    add_call_options(predict)
    predict.add_argument(
        "--keep-embeddings",
        action="store_true",
        help="keep the two stages' embeddings.h5 after a complete run (default: removed with "
        "the other intermediates; --keep-work keeps everything)",
    )
    add_engine_options(predict)
    _set_help(
        predict,
        "shard",
        "translate, then compute only stride shard I of N of both embedding stages (job "
        "arrays); when every shard is done, run the same command without --shard: it merges "
        "both stages and classifies",
    )
    predict.set_defaults(handler=_cmd_predict)


def _set_help(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """Replace the help of a shared option where this command does something of its own."""
    (action,) = [a for a in parser._actions if a.dest == dest]
    action.help = text


def add_model_options(p: argparse.ArgumentParser) -> None:
    """--chunk-size, --esm-model, --dnabert-model, --classifier (predict and evaluate)."""
    p.add_argument(
        "--chunk-size",
        type=chunk_size_arg,
        default=None,
        metavar="N",
        help="chunk length: 300 or 500 select the original classifier (default 500); a "
        "classifier made by `virnucpro train` sets it (any other value is refused)",
    )
    p.add_argument(
        "--esm-model",
        default=None,
        help="ESM-2 name, hub id, folder or .pt (default esm2_t36_3B_UR50D, or the model a "
        "trained --classifier records)",
    )
    p.add_argument(
        "--dnabert-model",
        default=None,
        help="DNABERT-S hub id or folder (default zhihan1996/DNABERT-S, or the one a trained "
        "--classifier records)",
    )
    p.add_argument(
        "--classifier",
        default=None,
        metavar="PATH",
        help="classifier: an original 300_model.pth/500_model.pth, our safetensors file, or a "
        "`virnucpro train` MODEL_DIR (default: the original for --chunk-size)",
    )
    add_models_dir_option(p)


def predict_options(args):
    """PredictOptions from the model, engine and call options (a trained classifier's
    chunk size and feature models are the defaults)."""
    from virnucpro.cli import engine_kwargs
    from virnucpro.pipeline.predict import DEFAULT_DNABERT, DEFAULT_ESM, PredictOptions
    from virnucpro.pipeline.trained_classifier import predict_defaults

    classifier, chunk_size, esm, dnabert = predict_defaults(
        args.classifier, args.chunk_size, args.esm_model, args.dnabert_model
    )
    return PredictOptions(
        chunk_size=chunk_size,
        esm_model=esm or DEFAULT_ESM,
        dnabert_model=dnabert or DEFAULT_DNABERT,
        classifier=classifier,
        precision=args.precision,
        engine=engine_kwargs(args),
        call_rule=call_rule(args),
        models_dir=args.models_dir,
        keep_embeddings=getattr(args, "keep_embeddings", False),  # predict only
    )


def _cmd_predict(args) -> int:
    from virnucpro.io.paths import require_input_files
    from virnucpro.pipeline.predict import run_predict

    check_inputs(args)
    require_input_files(args.inputs)  # before the models, which may take a download
    options = predict_options(args)
    if args.samplesheet is not None:
        from virnucpro.pipeline.samplesheet import run_samplesheet

        result = run_samplesheet(args.samplesheet, args.output_dir, options)
    elif args.paired:
        from virnucpro.pipeline.pairs import run_paired

        result = run_paired(*args.inputs, args.output_dir, options)
    else:
        result = run_predict(args.inputs[0], args.output_dir, options)
    c = result.counts
    if "shard" in c:
        print(
            f"shard {c['shard']} of both embedding stages done in {args.output_dir}; when every "
            "shard is done, run the same command without --shard to merge and classify",
            file=sys.stderr,
        )
        return result.exit_code
    print(
        f"{c['input_records']} records: {c['records_virus']} virus, {c['records_others']} others, "
        f"{c['records_no_call']} no call ({c['frames_scored']} frames scored){pair_counts(c)} "
        f"-> {args.output_dir}",
        file=sys.stderr,
    )
    if result.exit_code:
        from virnucpro.cli import problem

        problem(
            f"warning: {c['frames_unscored']} frame(s) could not be scored; see "
            f"{args.output_dir / 'skipped.tsv'}"
        )
    return result.exit_code


def add_selfcheck_command(sub, common: argparse.ArgumentParser, add_engine_options) -> None:
    check = sub.add_parser(
        "selfcheck",
        parents=[common],
        help="offline machinery check: the whole pipeline with small random models",
        description="Runs `predict` end to end with small RANDOM models written in the real file "
        "formats (Hugging Face folders, tokenizer.json, an original-format pickled classifier). "
        "Needs no network. A machinery check only: the predictions are meaningless.",
    )
    check.add_argument("input", type=Path, metavar="INPUT", help="e.g. examples/example.fna")
    check.add_argument("-o", "--output-dir", type=Path, required=True, metavar="OUT_DIR")
    check.add_argument("--chunk-size", type=int, choices=[300, 500], default=500)
    add_models_dir_option(check)
    add_engine_options(check)
    check.set_defaults(handler=_cmd_selfcheck)


def _cmd_selfcheck(args) -> int:
    from virnucpro.cli import engine_kwargs
    from virnucpro.io.paths import require_input_files
    from virnucpro.pipeline.selfcheck import NOTICE, run_selfcheck

    require_input_files([args.input])
    staged = check_models_dir(args.models_dir, args.chunk_size)  # the real models, first
    print(NOTICE, file=sys.stderr)
    result = run_selfcheck(
        args.input, args.output_dir, args.chunk_size, engine_kwargs(args), args.precision
    )
    c = result.counts
    print(
        f"selfcheck OK: {c['input_records']} records, {c['chunks']} chunks, "
        f"{c['frames_scored']} frames scored through both models and the classifier -> "
        f"{result.out_dir} ({NOTICE})",
        file=sys.stderr,
    )
    if staged:
        print(staged, file=sys.stderr)
    return result.exit_code


def check_models_dir(models_dir: Path | None, chunk_size: int) -> str | None:
    """With a models folder (``--models-dir`` / $VIRNUCPRO_MODELS): resolve and verify the
    models predict uses from it (raises when one is missing or damaged); None without one."""
    from virnucpro.models.models_dir import models_dir_from
    from virnucpro.pipeline.predict import PredictOptions, resolve_models

    folder = models_dir_from(models_dir)
    if folder is None:
        return None
    dnabert, esm, classifier, _ = resolve_models(
        PredictOptions(chunk_size=chunk_size, models_dir=str(folder))
    )
    return (
        f"models in {folder} ready for predict: {dnabert.name}@{dnabert.revision}, "
        f"{esm.name}@{esm.revision}, {classifier.name} (checksums verified)"
    )
