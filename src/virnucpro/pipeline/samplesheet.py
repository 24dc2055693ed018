"""``predict --samplesheet``: every sample of an nf-core sheet in one run, models loaded once.

Each sample is translated on its own (``OUT/samples/<sample>/stages/translate``, paired
samples through their ``mates.fna`` first). Their frames are then concatenated, ids prefixed
``<sample>::``, into ``OUT/stages/combined/`` and embedded by ONE engine job per stage
(``OUT/stages/dnabert_s``, ``OUT/stages/esm2``). Each sample is classified from the rows of
its prefix and gets the full set of predict outputs under ``OUT/samples/<sample>/``;
``OUT/samples.tsv`` holds the per-sample counts. Everything resumes like ``predict``.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from virnucpro._version import __version__
from virnucpro.engine.merge import disk_bytes
from virnucpro.errors import InputError, VirnucproError
from virnucpro.io.atomic import atomic_path, atomic_write_json
from virnucpro.pipeline.cleanup import DiskPeak, completion_key, finish
from virnucpro.pipeline.pairs import add_pair_counts, write_mates, write_pairs_table
from virnucpro.pipeline.predict import (
    PredictOptions,
    PredictResult,
    classify_and_write,
    embed_stage,
    file_sha256,
    read_records_table,
    resolve_models,
    stage_translate,
)

HEADER = ["sample", "fastq_1", "fastq_2"]
SAMPLES_TSV = "samples.tsv"
SAMPLES_COLUMNS = "sample\trecords\tpairs\tvirus\tothers\tno_call\tviral_fraction\n"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
PREFIX_SEPARATOR = "::"  # never in a sample name, so one sample's prefix matches no other's


@dataclass(frozen=True)
class Sample:
    name: str
    fastq_1: Path
    fastq_2: Path | None
    line: int  # in the sheet

    @property
    def prefix(self) -> str:
        return f"{self.name}{PREFIX_SEPARATOR}"


def read_samplesheet(path: Path) -> list[Sample]:
    """Parse and check the whole sheet (paths relative to its folder); one-line errors."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a samplesheet")
    if not path.is_file():
        raise InputError(f"{path}: no such samplesheet")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the samplesheet ({exc})") from None
    if not rows or [c.strip() for c in rows[0]] != HEADER:
        found = ",".join(rows[0]) if rows else "an empty file"
        raise InputError(f"{path}:1: the header must be {','.join(HEADER)}, found {found!r}")
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in row):
            continue
        if len(row) != len(HEADER):
            raise InputError(f"{path}:{line}: expected 3 columns, found {len(row)}")
        name, first, second = (c.strip() for c in row)
        if not _NAME.match(name):
            raise InputError(
                f"{path}:{line}: sample name {name!r} must be letters, digits, '.', '_' or '-' "
                "(it names a folder)"
            )
        if name in seen:
            raise InputError(f"{path}:{line}: sample {name!r} already on line {seen[name]}")
        seen[name] = line
        files = []
        for column, value in (("fastq_1", first), ("fastq_2", second)):
            if not value:
                if column == "fastq_1":
                    raise InputError(f"{path}:{line}: sample {name!r} has no fastq_1")
                files.append(None)
                continue
            file = Path(value) if Path(value).is_absolute() else path.parent / value
            if file.is_dir():
                raise InputError(
                    f"{path}:{line}: {column} of sample {name!r}: {file}: is a folder, not a "
                    "sequence file"
                )
            if not file.is_file():
                raise InputError(f"{path}:{line}: {column} of sample {name!r}: no such file {file}")
            files.append(file)
        samples.append(Sample(name, files[0], files[1], line))
    if not samples:
        raise InputError(f"{path}: the samplesheet lists no sample")
    return samples


def _combine(samples: list[Sample], translated: list[tuple], stage: Path) -> tuple[Path, Path]:
    """Every sample's frames, ids prefixed ``<sample>::``, in sample order (reused if same)."""
    key = [[s.name, (s_dir / "stages" / "translate" / "done.json").read_text()]
           for s, (_, _, s_dir, _) in zip(samples, translated, strict=True)]  # fmt: skip
    paths = (stage / "nucleotides.fa", stage / "proteins.faa")
    marker = stage / "done.json"
    if marker.exists() and all(p.exists() for p in paths):
        if json.loads(marker.read_text()).get("key") == key:
            return paths
    stage.mkdir(parents=True, exist_ok=True)
    for final, which in zip(paths, (1, 2), strict=True):
        with atomic_path(final) as tmp, open(tmp, "wb", buffering=1 << 20) as out:
            for sample, (_, files, _, _) in zip(samples, translated, strict=True):
                head = b">" + sample.prefix.encode()
                with open(files[which], "rb") as f:
                    for line in f:
                        out.write(head + line[1:] if line.startswith(b">") else line)
    atomic_write_json(marker, {"key": key})
    return paths


def _prepare(sample: Sample, out_dir: Path, options: PredictOptions) -> tuple:
    """Mates (paired) and translation of one sample: (input, stage files, folder, summary)."""
    folder = out_dir / "samples" / sample.name
    source, pairs = sample.fastq_1, None
    if sample.fastq_2 is not None:
        source, pairs = write_mates(sample.fastq_1, sample.fastq_2, folder / "stages" / "pairs")
    quiet = bool(options.engine.get("quiet"))
    summary, files, records_tsv, reused = stage_translate(
        source, folder / "stages" / "translate", options.chunk_size, quiet
    )
    records = read_records_table(records_tsv, source)
    return source, files, folder, {
        "translated": summary, "records": records, "pairs": pairs, "reused": reused
    }  # fmt: skip


def run_samplesheet(sheet: Path, out_dir: Path, options: PredictOptions) -> PredictResult:
    """Run predict over every sample of ``sheet`` into ``out_dir`` (see the module docstring)."""
    from virnucpro.io.index import SequenceIndex
    from virnucpro.report.render import write_report

    started = time.time()
    out_dir = Path(out_dir)
    if options.engine.get("shard"):
        raise InputError("--shard cannot be combined with --samplesheet")
    samples = read_samplesheet(sheet)
    created = not out_dir.exists()
    timings: dict[str, float] = {}
    disk = DiskPeak(out_dir)
    try:
        dnabert, esm, classifier_path, classifier = resolve_models(options)
        t = time.time()
        prepared = [_prepare(s, out_dir, options) for s in samples]
        timings["translate"] = time.time() - t
    except VirnucproError:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    nucleotides, proteins = _combine(samples, prepared, out_dir / "stages" / "combined")
    stage_results, h5, all_ids = {}, {"dnabert_s": None, "esm2": None}, []
    if any(p[3]["translated"]["frames_kept"] for p in prepared):
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
        all_ids = list(SequenceIndex.open(out_dir / "stages" / "esm2" / "work" / "index").ids)
    models = {
        "dnabert_s": dnabert.fingerprint_fields(),
        "esm2": esm.fingerprint_fields(),
        "classifier": {"path": str(classifier_path), "sha256": file_sha256(classifier_path),
                       "input_dim": classifier.input_dim},
    }  # fmt: skip
    stages = {name: {"exit_code": r.exit_code, "embedded": r.embedded, "missing": r.missing,
                     "failed": r.failed, "report": str(out_dir / "stages" / name / "run.json")}
              for name, r in stage_results.items()}  # fmt: skip
    parameters = {"chunk_size": options.chunk_size, "precision": options.precision,
                  "record_threshold": options.call_rule.threshold,
                  "min_viral_fraction": options.call_rule.min_viral_fraction,
                  "samplesheet": str(Path(sheet).resolve()), **options.engine}  # fmt: skip
    partial = any(r.exit_code for r in stage_results.values())
    rows, totals = [], {"input_records": 0, "records_virus": 0, "records_others": 0,
                        "records_no_call": 0, "frames_scored": 0, "frames_unscored": 0}  # fmt: skip
    for sample, (source, files, folder, info) in zip(samples, prepared, strict=True):
        t = time.time()
        prefix = sample.prefix
        frame_ids = [i[len(prefix) :] for i in all_ids if i.startswith(prefix)]
        counts = classify_and_write(
            source, folder, files[0], info["records"], frame_ids, h5, classifier, options, prefix
        )
        counts = {"input_records": len(info["records"]), **info["translated"], **counts}
        sample_partial = partial or bool(counts["frames_unscored"])
        report = {
            "virnucpro_version": __version__, "command": "predict", "sample": sample.name,
            "status": "partial" if sample_partial else "complete",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "input": {"path": str(source.resolve()), "size": source.stat().st_size},
            "parameters": parameters, "models": models, "counts": counts,
            "translate_reused": info["reused"], "stages": stages,
            "timings_s": {"classify_and_write": time.time() - t},
        }  # fmt: skip
        atomic_write_json(folder / "run.json", report)
        if info["pairs"] is not None:
            pair_counts = write_pairs_table(folder, info["pairs"], options.call_rule)
            add_pair_counts(folder, pair_counts)
            counts.update(pair_counts)
        write_report(folder)
        partial = partial or sample_partial
        for key in totals:
            totals[key] += counts[key]
        rows.append((sample.name, counts))
    _write_samples_table(out_dir, rows)
    timings["total"] = time.time() - started
    atomic_write_json(out_dir / "run.json", {
        "virnucpro_version": __version__, "command": "predict --samplesheet",
        "status": "partial" if partial else "complete",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": str(Path(sheet).resolve()), "size": Path(sheet).stat().st_size},
        "parameters": parameters, "models": models,
        "counts": {"samples": len(samples), **totals}, "stages": stages, "timings_s": timings,
    })  # fmt: skip
    write_report(out_dir)
    key = completion_key([Path(sheet)], options, {"samplesheet": True})
    finish(out_dir, key, disk, keep_work=bool(options.engine.get("keep_work")),
           keep_embeddings=options.keep_embeddings)  # fmt: skip
    return PredictResult(2 if partial else 0, out_dir, {"samples": len(samples), **totals})


def _write_samples_table(out_dir: Path, rows: list[tuple[str, dict]]) -> None:
    """samples.tsv: records, pairs, calls per record, viral fraction (virus / records)."""
    with atomic_path(out_dir / SAMPLES_TSV) as tmp, open(tmp, "w") as out:
        out.write(SAMPLES_COLUMNS)
        for name, c in rows:
            records = c["input_records"]
            fraction = f"{c['records_virus'] / records:.4f}" if records else "NA"
            out.write(
                f"{name}\t{records}\t{c.get('pairs', 0)}\t{c['records_virus']}\t"
                f"{c['records_others']}\t{c['records_no_call']}\t{fraction}\n"
            )
