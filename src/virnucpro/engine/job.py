"""One embedding job from input files to a validated HDF5: index, plan, run, merge, report.

A job is (input files, an embedder spec, parameters). Its description is stored in
``work/job.json``; re-running the same job on the same directory resumes it (committed units
are reused), a different job on the same directory is refused unless ``restart`` is set.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from virnucpro import __version__
from virnucpro.engine.local import Interrupted, LocalBackend
from virnucpro.engine.merge import committed_positions, merge_units
from virnucpro.engine.progress import Progress
from virnucpro.engine.rundir import RunDir
from virnucpro.engine.scheduler import Scheduler
from virnucpro.engine.unitfile import read_unit
from virnucpro.engine.units import Unit, default_unit_tokens, plan_units, unit_plan_digest
from virnucpro.engine.worker import WorkerConfig
from virnucpro.errors import VirnucproError
from virnucpro.io.atomic import atomic_write_json, atomic_write_text
from virnucpro.io.index import SequenceIndex, build_or_load
from virnucpro.models.base import EmbedderSpec, planning_tokens

log = logging.getLogger("virnucpro.engine")


@dataclass
class EngineOptions:
    devices: list[str]  # one torch device string per worker
    tokens_per_batch: int = 4096
    unit_tokens: int | None = None  # default: see units.default_unit_tokens
    max_retries: int = 3
    worker_timeout: float | None = None
    strict: bool = False
    restart: bool = False
    quiet: bool = False
    threads: int | None = None  # CPU threads per worker


@dataclass
class JobResult:
    output: Path | None
    exit_code: int  # 0 complete, 2 partial
    expected: int
    embedded: int
    missing: int
    failed: int
    failed_ranks: list[int]
    report: dict = field(default_factory=dict)


def _tsv(path: Path, header: str, rows: list[tuple]) -> None:
    lines = [header] + ["\t".join(str(v) for v in row) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _job_description(index: SequenceIndex, spec: EmbedderSpec, options, units, unit_tokens):
    return {
        "inputs": [{"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns} for f in index.files],
        "input_fingerprint": index.fingerprint(),
        "model": spec.fingerprint_fields(),
        "parameters": {"unit_tokens": unit_tokens, "plan": unit_plan_digest(units)},
    }


def _differences(old: dict, new: dict) -> list[str]:
    changes = []
    if old.get("input_fingerprint") != new["input_fingerprint"]:
        changes.append("the input files changed")
    if old.get("model") != new["model"]:
        keys = [k for k in new["model"] if old.get("model", {}).get(k) != new["model"][k]]
        changes.append(f"the model changed ({', '.join(keys)})")
    if old.get("parameters") != new["parameters"]:
        changes.append("the work plan changed (--tokens-per-batch or --unit-tokens)")
    return changes


def _check_resume(rd: RunDir, description: dict, restart: bool) -> dict | None:
    """The previous job state if it may be resumed; wipes it when restarting."""
    if not rd.job.exists():
        return None
    import json

    previous = json.loads(rd.job.read_text())
    if restart:
        shutil.rmtree(rd.units, ignore_errors=True)
        rd.units.mkdir(parents=True, exist_ok=True)
        for path in (rd.output, rd.missing, rd.failed):
            path.unlink(missing_ok=True)
        return None
    changes = _differences(previous.get("job", {}), description)
    if changes:
        raise VirnucproError(
            f"{rd.root} holds results of a different job: {'; '.join(changes)}. Nothing was "
            "overwritten. Re-run with --restart to discard them, or choose another output directory"
        )
    return previous


def _remaining_units(units: list[Unit], done: np.ndarray) -> list[Unit]:
    """Plan units minus the positions already committed (reused on resume)."""
    is_done = np.zeros(int(max([u.positions.max() for u in units if len(u)] + [0])) + 1, bool)
    is_done[done[done < is_done.size]] = True
    remaining = []
    for unit in units:
        left = unit.positions[~is_done[unit.positions]]
        if left.size == len(unit):
            remaining.append(unit)
        elif left.size:
            share = unit.tokens * left.size // len(unit)
            remaining.append(Unit(f"{unit.key}r", left, share))
    return remaining


def run_embedding_job(
    files: list[Path],
    out_dir: Path,
    spec: EmbedderSpec,
    options: EngineOptions,
    *,
    desc: str = "embedding",
) -> JobResult:
    """Embed every sequence of ``files`` into ``out_dir/embeddings.h5`` (see RunDir)."""
    started = time.time()
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    rd = RunDir(out_dir)
    try:
        rd.work.mkdir(parents=True, exist_ok=True)
        index = build_or_load([Path(f) for f in files], rd.index)
    except VirnucproError:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    rd.create()
    handler = logging.FileHandler(rd.logs / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root_logger = logging.getLogger("virnucpro")
    root_logger.addHandler(handler)
    if root_logger.getEffectiveLevel() > logging.INFO:
        root_logger.setLevel(logging.INFO)  # run.log records INFO; terminal handlers filter
    try:
        return _run(index, rd, spec, options, desc, started)
    finally:
        root_logger.removeHandler(handler)
        handler.close()


def _run(index, rd: RunDir, spec, options: EngineOptions, desc: str, started: float) -> JobResult:
    timings: dict[str, float] = {"index": time.time() - started}
    if index.skipped:
        _tsv(rd.skipped, "id\tfile\tline\treason",
             [(s.id, s.file, s.line, s.reason) for s in index.skipped])
    costs = planning_tokens(spec, index.lengths)
    total_tokens = int(costs.sum())
    unit_tokens = options.unit_tokens or default_unit_tokens(total_tokens, options.tokens_per_batch)
    units = plan_units(index.order, costs, unit_tokens)
    description = _job_description(index, spec, options, units, unit_tokens)
    previous = _check_resume(rd, description, options.restart)
    if previous and previous.get("status") == "complete" and rd.output.exists():
        log.info("%s is already complete; nothing to do", rd.output)
        report = previous.get("report", {})
        return JobResult(rd.output, 0, len(index), len(index), 0, 0, [], report)

    unit_files = sorted(rd.units.glob("u*.h5"))
    done, _ = committed_positions(unit_files, len(index))
    todo = _remaining_units(units, done)
    atomic_write_json(rd.job, {"status": "running", "job": description, "version": __version__})
    reused = len(unit_files)
    log.info(
        "%d sequences, %d units (%d tokens each), %d reused, %d workers on %s",
        len(index), len(units), unit_tokens, reused, len(options.devices), ",".join(options.devices),
    )

    scheduler = Scheduler(todo, max_retries=options.max_retries)
    progress = Progress(sum(len(u) for u in todo), desc=desc, quiet=options.quiet)

    def make_config(rank: int, device: str) -> WorkerConfig:
        return WorkerConfig(
            rank=rank,
            device=device,
            threads=options.threads,
            spec=spec,
            index_dir=str(rd.index),
            units_dir=str(rd.units),
            log_path=str(rd.worker_log(rank)),
            tokens_per_batch=options.tokens_per_batch,
        )

    backend = LocalBackend(
        options.devices, make_config, max_retries=options.max_retries,
        worker_timeout=options.worker_timeout,
    )
    compute_started = time.time()
    try:
        workers = backend.run(scheduler, progress)
    except Interrupted as exc:
        progress.close()
        _write_report(rd, _report(index, spec, options, units, todo, backend.workers, scheduler,
                                  started, timings, status="interrupted"))
        exc.work_dir = rd.work
        raise
    finally:
        progress.close()
    timings["compute"] = time.time() - compute_started
    return _finish(index, rd, spec, options, units, todo, workers, scheduler, backend,
                   started, timings, reused)


def _finish(index, rd, spec, options, units, todo, workers, scheduler, backend, started,
            timings, reused) -> JobResult:
    unit_files = sorted(rd.units.glob("u*.h5"))
    done, _ = committed_positions(unit_files, len(index))
    lost_failed, failed_reasons = scheduler.lost_positions("failed")
    lost_missing, missing_reasons = scheduler.lost_positions("missing")
    unit_failed_pos, unit_failed_reasons = [], []
    for path in unit_files:
        unit = read_unit(path, verify=False)
        unit_failed_pos.extend(unit.failed_positions.tolist())
        unit_failed_reasons.extend(unit.failed_reasons)
    failed_pos = np.concatenate([lost_failed, np.array(unit_failed_pos, np.int64)])
    failed_why = failed_reasons + unit_failed_reasons
    # Every input is accounted for: embedded + failed + missing == indexed, exactly once.
    accounted = np.zeros(len(index), dtype=np.int64)
    np.add.at(accounted, done, 1)
    np.add.at(accounted, failed_pos, 1)
    np.add.at(accounted, lost_missing, 1)
    unaccounted = np.flatnonzero(accounted != 1)
    if unaccounted.size:
        raise VirnucproError(
            f"internal accounting error: {unaccounted.size} sequence(s) not accounted for exactly "
            f"once (first: {index.ids[int(unaccounted[0])]}); the output was not written"
        )
    failed_ranks = [w.rank for w in workers if w.status == "failed"]
    partial = bool(failed_pos.size or lost_missing.size)
    if lost_missing.size:
        _tsv(rd.missing, "id\treason",
             [(index.ids[p], r) for p, r in sorted(zip(lost_missing.tolist(), missing_reasons))])
    if failed_pos.size:
        _tsv(rd.failed, "id\treason",
             [(index.ids[p], r) for p, r in sorted(zip(failed_pos.tolist(), failed_why))])
    status = "partial" if partial else "complete"
    report = _report(index, spec, options, units, todo, workers, scheduler, started, timings,
                     status=status, reused=reused, embedded=int(done.size),
                     missing=int(lost_missing.size), failed=int(failed_pos.size))
    if partial and options.strict:
        report["status"] = "failed (strict)"
        _write_report(rd, report)
        raise VirnucproError(
            f"{lost_missing.size} sequence(s) missing and {failed_pos.size} failed "
            f"(see {rd.missing.name} / {rd.failed.name}); --strict: no output written"
        )
    if not unit_files and not backend.outputs:
        _write_report(rd, report)
        reasons = "; ".join(d for w in workers for d in w.deaths[-1:]) or "no worker started"
        raise VirnucproError(f"no sequence could be embedded: {reasons}")
    outputs, dim = _output_shape(unit_files, backend)
    merge_started = time.time()
    attrs = _attributes(index, spec, workers)
    result = merge_units(index, unit_files, rd.output, outputs=outputs, dim=dim,
                         per_token=spec.per_token, attrs=attrs)
    timings["merge"] = time.time() - merge_started
    report["timings_s"] = timings
    report["counts"]["truncated"] = result.truncated
    report["outputs"] = {"embeddings": str(rd.output), "datasets": outputs, "dim": dim}
    _write_report(rd, report)
    atomic_write_json(rd.job, {"status": status, "job": _job_description(index, spec, options, units, report["parameters"]["unit_tokens"]),
                               "version": __version__, "report": report})
    if not partial:
        shutil.rmtree(rd.units, ignore_errors=True)
        rd.missing.unlink(missing_ok=True)
        rd.failed.unlink(missing_ok=True)
    return JobResult(rd.output, 2 if partial else 0, len(index), int(done.size),
                     int(lost_missing.size), int(failed_pos.size), failed_ranks, report)


def _output_shape(unit_files: list[Path], backend) -> tuple[list[str], int]:
    if backend.outputs:
        return list(backend.outputs["outputs"]), int(backend.outputs["dim"])
    import h5py

    with h5py.File(unit_files[0], "r") as f:
        names = list(f["vectors"])
        return names, int(f["vectors"][names[0]].shape[1])


def _attributes(index, spec: EmbedderSpec, workers) -> dict:
    import json

    describe = next((w.info.get("describe") for w in workers if w.info.get("describe")), {}) or {}
    dtypes = sorted({w.info.get("dtype") for w in workers if w.info.get("dtype")})
    attrs = {
        "virnucpro_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": spec.name,
        "model_family": spec.family,
        "model_revision": spec.revision or "",
        "model_checksum": spec.checksum or "",
        "layers": json.dumps(list(spec.layers)),
        "precision": ",".join(dtypes) or spec.precision,
        "input_files": json.dumps(
            [{"path": f.path, "size": f.size, "mtime_ns": f.mtime_ns} for f in index.files]
        ),
        "input_fingerprint": index.fingerprint(),
    }
    for key, value in describe.items():
        attrs.setdefault(key, value if isinstance(value, (int, float, str)) else json.dumps(value))
    return attrs


def _report(index, spec, options, units, todo, workers, scheduler, started, timings, *,
            status, reused=0, embedded=0, missing=0, failed=0) -> dict:
    tokens = sum(w.tokens for w in workers)
    slots = sum(w.slots for w in workers)
    return {
        "virnucpro_version": __version__,
        "status": status,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": spec.fingerprint_fields(),
        "inputs": index.describe(),
        "parameters": {
            "devices": options.devices,
            "tokens_per_batch": options.tokens_per_batch,
            "unit_tokens": options.unit_tokens
            or default_unit_tokens(int(planning_tokens(spec, index.lengths).sum()),
                                   options.tokens_per_batch),
            "max_retries": options.max_retries,
            "worker_timeout": options.worker_timeout,
            "strict": options.strict,
        },
        "counts": {
            "input_records": len(index) + len(index.skipped),
            "skipped": len(index.skipped),
            "expected": len(index),
            "embedded": embedded,
            "missing": missing,
            "failed": failed,
        },
        "units": {
            "planned": len(units),
            "reused": reused,
            "to_compute": len(todo),
            "computed": len(scheduler.done),
            "computed_keys": sorted(scheduler.done),
            "retries": scheduler.retries,
            "splits": scheduler.splits,
        },
        "workers": [w.report() for w in workers],
        "failed_ranks": [w.rank for w in workers if w.status == "failed"],
        "tokens": tokens,
        "padded_slots": slots,
        "padding_fraction": (slots - tokens) / slots if slots else 0.0,
        "seconds": time.time() - started,
        "tokens_per_second": tokens / timings["compute"] if timings.get("compute") else None,
        "timings_s": timings,
    }


def _write_report(rd: RunDir, report: dict) -> None:
    atomic_write_json(rd.report, report)
