"""``virnucpro predict``: translate, embed twice on the engine, join by id, classify, report.

OUT/prediction_results.txt, prediction_results_highestscore.csv   the original tables
OUT/virnucpro_summary.tsv   one row per input record (every record appears)
OUT/viral.fna               the records called viral
OUT/skipped.tsv             everything that produced no score, with the reason
OUT/run.json                counts, versions, models and checksums, parameters, timings
OUT/stages/translate/       chunked and translated sequences (reused on resume)
OUT/stages/dnabert_s/, OUT/stages/esm2/   engine run directories (resumable)
"""

from __future__ import annotations

import csv
import logging
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from virnucpro._version import __version__
from virnucpro.engine.claim import read_record
from virnucpro.engine.merge import disk_bytes
from virnucpro.errors import InputError, ModelError, VirnucproError
from virnucpro.io.atomic import atomic_path, atomic_write_json
from virnucpro.io.fasta import read_records
from virnucpro.io.paths import require_input_files
from virnucpro.models.base import EmbedderSpec
from virnucpro.pipeline import tables
from virnucpro.pipeline.cleanup import DiskPeak, completion_key, finish, previous_result
from virnucpro.pipeline.features import joined_features
from virnucpro.pipeline.record_call import CallRule
from virnucpro.pipeline.record_outputs import write_record_outputs
from virnucpro.pipeline.translate import TranslateResult, output_paths, translate_file

DEFAULT_ESM = "esm2_t36_3B_UR50D"
log = logging.getLogger("virnucpro.pipeline")
DEFAULT_DNABERT = "zhihan1996/DNABERT-S"
NO_CODON = "no complete codon (no 3 unambiguous nucleotides A/C/G/T in a row)"
_CODON = re.compile("[ACGT]{3}")  # the six frames together read a codon at every start


@dataclass
class PredictOptions:
    chunk_size: int = 500
    esm_model: str = DEFAULT_ESM
    dnabert_model: str = DEFAULT_DNABERT
    classifier: str | None = None  # default: the original classifier for the chunk size
    precision: str = "auto"
    engine: dict = field(default_factory=dict)  # devices, world_size, tokens_per_batch, ...
    call_rule: CallRule = field(default_factory=CallRule)  # the record call (record_call.py)
    models_dir: str | None = None  # a `virnucpro download --dest` folder ($VIRNUCPRO_MODELS)
    keep_embeddings: bool = False  # keep the two stage embeddings.h5 after a complete run


@dataclass
class PredictResult:
    exit_code: int
    out_dir: Path
    counts: dict


def stage_translate(
    input_path: Path, stage: Path, chunk_size: int, quiet: bool, restart: bool = False
):
    """Translate once; reuse the outputs while the input and chunk size are unchanged."""
    marker = stage / "done.json"
    stat = input_path.stat()
    key = {
        "input": str(input_path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "chunk_size": chunk_size,
        "version": __version__,
    }
    paths = output_paths(input_path, stage, chunk_size)
    records_tsv = stage / "records.tsv"
    if marker.exists() and not restart:
        saved = read_record(marker, "translate record")
        if saved.get("key") == key and all(p.exists() for p in paths) and records_tsv.exists():
            return saved["result"], paths, records_tsv, True
    stage.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    with tqdm(desc="translate", unit="rec", disable=quiet or None, file=sys.stderr) as bar:
        result: TranslateResult = translate_file(
            input_path, stage, chunk_size, records_tsv=records_tsv, progress=bar.update
        )
    summary = {
        "records": result.records,
        "empty_records": result.empty_records,
        "chunks": result.chunks,
        "chunks_without_frame": result.chunks_without_frame,
        "frames_kept": result.frames_kept,
        "bases": result.bases,
        "non_acgtn": result.non_acgtn,
        "non_acgtn_chars": dict(result.non_acgtn_chars),
    }
    atomic_write_json(marker, {"key": key, "result": summary})
    return summary, paths, records_tsv, False


def read_records_table(path: Path, input_path: Path) -> list[tuple[str, int, int, int]]:
    """(id, length, chunks, frames kept) of every record of translate's records.tsv."""
    try:
        return _records_rows(path, input_path)
    except (OSError, ValueError, StopIteration) as exc:
        raise InputError(
            f"{path}: unreadable run record ({exc or 'empty'}); re-run with --restart"
        ) from None


def _records_rows(path: Path, input_path: Path) -> list[tuple[str, int, int, int]]:
    rows = []
    seen: dict[str, int] = {}
    with open(path) as f:
        reader = csv.reader(f, delimiter="\t")
        next(reader)
        for number, (rid, length, chunks, kept) in enumerate(reader, start=1):
            if rid in seen:
                raise InputError(
                    f"{input_path}: duplicate record id {rid!r} (records {seen[rid]} and {number})"
                )
            seen[rid] = number
            rows.append((rid, int(length), int(chunks), int(kept)))
    return rows


def resolve_models(options: PredictOptions):
    """(DNABERT-S spec, ESM-2 spec, classifier path, classifier); every missing one named."""
    from virnucpro.api import resolve_model
    from virnucpro.models.classifier import load_classifier
    from virnucpro.models.missing import ModelsUnavailable
    from virnucpro.models.registry import resolve_classifier

    where = {"precision": options.precision, "models_dir": options.models_dir}
    resolved, problems = [], []
    for resolve in (
        lambda: resolve_model(options.dnabert_model, flag="--dnabert-model", **where),
        lambda: resolve_model(options.esm_model, flag="--esm-model", **where),
        lambda: resolve_classifier(
            options.classifier,
            options.chunk_size,
            flag="--classifier",
            models_dir=options.models_dir,
        ),
    ):
        try:
            resolved.append(resolve())
        except ModelError as exc:  # name every missing model at once, not one per attempt
            problems.append(exc)
    if problems:
        unavailable = [p for p in problems if isinstance(p, ModelsUnavailable)]
        others = [str(p) for p in problems if not isinstance(p, ModelsUnavailable)]
        if unavailable and not others:
            raise ModelsUnavailable.merge(unavailable)
        if unavailable:
            others.append(str(ModelsUnavailable.merge(unavailable)))
        raise ModelError(" | ".join(others))
    dnabert, esm, classifier_path = resolved
    from virnucpro.pipeline.trained_classifier import check_feature_models

    check_feature_models(classifier_path, dnabert, esm)
    return dnabert, esm, classifier_path, load_classifier(classifier_path)


def embed_stage(fasta: Path, out: Path, spec: EmbedderSpec, engine: dict, desc: str):
    """One embedding stage: an ordinary engine job on ``fasta`` in ``out``."""
    from virnucpro.api import embed

    # the stage's index stays until predict has read the frame ids (cleanup: see cleanup.py)
    return embed([fasta], out, spec, desc=desc, **{**engine, "keep_work": True})


def run_predict(
    input_path: Path, out_dir: Path, options: PredictOptions, *, report: bool = True
) -> PredictResult:
    """Run the whole VirNucPro method on one FASTA/FASTQ file (``report``: write report.html)."""
    started = time.time()
    input_path, out_dir = Path(input_path), Path(out_dir)
    require_input_files([input_path])
    created = not out_dir.exists()
    timings: dict[str, float] = {}
    try:
        dnabert, esm, classifier_path, classifier = resolve_models(options)
        timings["resolve_models"] = time.time() - started
        key = completion_key([input_path], options, models_key(dnabert, esm, classifier_path))
        previous = previous_result(out_dir, key) if report else None
        if previous is not None:  # the same complete run: its answers are all there
            return PredictResult(0, out_dir, previous["counts"])
        disk = DiskPeak(out_dir)
        t = time.time()
        quiet = bool(options.engine.get("quiet"))
        log.info("stage translate: %s, chunks of %d", input_path, options.chunk_size)
        translated, (chunked, nucleotides, proteins), records_tsv, reused = stage_translate(
            input_path,
            out_dir / "stages" / "translate",
            options.chunk_size,
            quiet,
            bool(options.engine.get("restart")),
        )
        records = read_records_table(records_tsv, input_path)
        timings["translate"] = time.time() - t
    except VirnucproError:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    stage_results = {}
    h5 = {"dnabert_s": None, "esm2": None}
    frame_ids: Sequence[str] = []
    if translated["frames_kept"]:
        for name, fasta, spec, desc in (
            ("dnabert_s", nucleotides, dnabert, "DNABERT-S"),
            ("esm2", proteins, esm, "ESM-2"),
        ):
            t = time.time()
            before = (disk.sample(), disk_bytes(out_dir / "stages" / name))
            result = embed_stage(fasta, out_dir / "stages" / name, spec, options.engine, desc)
            disk.stage(*before, result)
            timings[name] = time.time() - t
            stage_results[name] = result
            h5[name] = result.output
        if options.engine.get("shard"):
            return _shard_done(out_dir, options, stage_results, translated, timings, started)
        from virnucpro.io.index import SequenceIndex

        # the index's id table, read block by block by the join (no list of every frame id)
        frame_ids = SequenceIndex.open(out_dir / "stages" / "esm2" / "work" / "index").ids
    t = time.time()
    log.info("stage classify: %d frames", len(frame_ids))
    counts = classify_and_write(
        input_path, out_dir, chunked, records, frame_ids, h5, classifier, options
    )
    timings["classify_and_write"] = time.time() - t
    partial = any(r.exit_code != 0 for r in stage_results.values()) or counts["frames_unscored"]
    run_report = {
        "virnucpro_version": __version__,
        "command": "predict",
        "status": "partial" if partial else "complete",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": str(input_path.resolve()), "size": input_path.stat().st_size},
        "parameters": {
            "chunk_size": options.chunk_size,
            "precision": options.precision,
            "record_threshold": options.call_rule.threshold,
            "min_viral_fraction": options.call_rule.min_viral_fraction,
            **{k: v for k, v in options.engine.items()},
        },
        "models": {
            "dnabert_s": dnabert.fingerprint_fields(),
            "esm2": esm.fingerprint_fields(),
            "classifier": {
                "path": str(classifier_path),
                "sha256": file_sha256(classifier_path),
                "input_dim": classifier.input_dim,
            },
        },
        "counts": {**{"input_records": len(records)}, **translated, **counts},
        "translate_reused": reused,
        "stages": {
            name: {
                "exit_code": r.exit_code,
                "embedded": r.embedded,
                "missing": r.missing,
                "failed": r.failed,
                "failed_ranks": r.failed_ranks,
                "report": str(out_dir / "stages" / name / "run.json"),
            }
            for name, r in stage_results.items()
        },
        "timings_s": {**timings, "total": time.time() - started},
    }
    run_report["disk"] = {"peak_bytes": max(disk.peak, disk.sample())}
    atomic_write_json(out_dir / "run.json", run_report)
    if report:
        from virnucpro.report.render import write_report

        write_report(out_dir)
        finish(out_dir, key, disk, keep_work=bool(options.engine.get("keep_work")),
               keep_embeddings=options.keep_embeddings)  # fmt: skip
    return PredictResult(2 if partial else 0, out_dir, run_report["counts"])


def _shard_done(out_dir, options, stage_results, translated, timings, started) -> PredictResult:
    """A ``--shard I/N`` run stops after its share of both embedding stages."""
    shard = options.engine["shard"]
    report = {
        "virnucpro_version": __version__,
        "command": "predict",
        "status": f"shard {shard} done",
        "counts": translated,
        "stages": {
            name: {
                "exit_code": r.exit_code,
                "embedded": r.embedded,
                "expected": r.expected,
                "missing": r.missing,
                "failed": r.failed,
            }
            for name, r in stage_results.items()
        },
        "timings_s": {**timings, "total": time.time() - started},
    }
    safe = str(shard).replace("/", "of")
    atomic_write_json(out_dir / f"run.shard{safe}.json", report)
    code = 2 if any(r.exit_code for r in stage_results.values()) else 0
    return PredictResult(code, out_dir, {**translated, "shard": str(shard)})


def models_key(dnabert: EmbedderSpec, esm: EmbedderSpec, classifier_path: Path) -> dict:
    """The three models as a complete run's answers depend on them (completion_key)."""
    return {"dnabert_s": dnabert.fingerprint_fields(), "esm2": esm.fingerprint_fields(),
            "classifier": file_sha256(classifier_path)}  # fmt: skip


def file_sha256(path: Path) -> str:
    """sha256 of a file (the classifier's checksum in run.json)."""
    from virnucpro.models.hub import sha256_file

    return sha256_file(path)


def classify_and_write(
    input_path,
    out_dir,
    chunked,
    records,
    frame_ids,
    h5,
    classifier,
    options: PredictOptions,
    id_prefix: str = "",
):
    """Join the frames' vectors by id, classify, write every table of ``out_dir``; counts."""
    from virnucpro.models.classifier import check_feature_width

    blocks, unscored, (dna_dim, protein_dim) = joined_features(
        frame_ids, h5["dnabert_s"], h5["esm2"], id_prefix
    )
    if frame_ids and len(unscored) < len(frame_ids):
        check_feature_width(
            classifier, dna_dim + protein_dim, source=f"DNABERT-S {dna_dim} + ESM-2 {protein_dim}"
        )
    frames_scored: dict[str, int] = {}
    with atomic_path(out_dir / tables.PREDICTIONS) as tmp, open(tmp, "w") as handle:
        writer = tables.PredictionWriter(handle)
        for block in blocks:
            probabilities = classifier.predict_proba(block.features)
            writer.add(block.ids, probabilities)
            for frame in block.ids:
                rid = tables.record_of(tables.chunk_of(frame))
                frames_scored[rid] = frames_scored.get(rid, 0) + 1
    with atomic_path(out_dir / tables.HIGHEST) as tmp, open(tmp, "w") as handle:
        writer.write_highest(handle)
    answers = write_record_outputs(
        input_path, out_dir, records, writer, frames_scored, options.chunk_size, options.call_rule
    )
    skipped_rows = _skipped_rows(chunked, records, writer, unscored)
    with atomic_path(out_dir / tables.SKIPPED) as tmp, open(tmp, "w") as handle:
        handle.write("id\tlevel\treason\n")
        handle.writelines(f"{i}\t{level}\t{reason}\n" for i, level, reason in skipped_rows)
    return {
        "frames_scored": writer.rows,
        "frames_unscored": len(unscored),
        "chunks_scored": len(writer.chunks),
        **answers,
        "skipped_rows": len(skipped_rows),
    }


def _skipped_rows(chunked: Path, records, writer, unscored: dict[str, str]):
    """Records, chunks and frames that produced no score, each with its reason."""
    rows = [(rid, "record", "empty sequence") for rid, length, _, _ in records if length == 0]
    chunks_with_unscored = {tables.chunk_of(frame) for frame in unscored}
    for record in read_records(chunked):
        if record.id in writer.chunks:
            continue
        if record.id in chunks_with_unscored:
            rows.append(
                (record.id, "chunk", "none of its frames could be embedded (see its frames)")
            )
        elif _CODON.search(record.seq) is None:
            rows.append((record.id, "chunk", NO_CODON))
        else:
            rows.append((record.id, "chunk", "no stop-free frame in any of the six frames"))
    rows.extend((frame, "frame", reason) for frame, reason in unscored.items())
    return rows
