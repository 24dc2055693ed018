"""One embedding job from input files to a validated HDF5: index, plan, run, merge, report.

A job is (input files, an embedder spec). Re-running it on the same directory resumes it:
committed units are reused, whatever plan, worker count or shard produced them. A different
job on the same directory is refused unless ``restart`` is set. ``shard=(I, N)`` computes only
the I-th stride shard and stops before the merge; ``merge_job`` merges the shards.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from virnucpro.engine.claim import claim_run_dir, shard_label
from virnucpro.engine.inputkind import check_input_kind
from virnucpro.engine.interrupted import Interrupted
from virnucpro.engine.jobstate import JobState, describe_job, job_tag, remove_own
from virnucpro.engine.merge import (
    MERGE_STATE,
    clear_merge_state,
    committed_positions,
    disk_bytes,
    merge_units,
    merged_positions,
    merged_shape,
)
from virnucpro.engine.progress import Progress
from virnucpro.engine.quarantine import check_units
from virnucpro.engine.report import attributes, build_report
from virnucpro.engine.retry import forget_failures
from virnucpro.engine.rundir import RunDir
from virnucpro.engine.scheduler import Scheduler
from virnucpro.engine.unitfile import UnitResult, read_unit, write_unit
from virnucpro.engine.units import Unit, default_unit_tokens, plan_units
from virnucpro.errors import VirnucproError
from virnucpro.io.atomic import atomic_write_json, atomic_write_text
from virnucpro.io.diskerrors import QuietFileHandler, disk_errors
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
    backend: str = "local"  # "local" or "ray"
    ray_address: str | None = None
    shard: tuple[int, int] | None = None  # compute only stride shard I of N
    retry_failed: bool = False  # compute again what earlier runs isolated as failed
    keep_work: bool = False  # keep work/index after a complete run


@dataclass
class JobResult:
    output: Path | None  # None for a shard run (nothing merged yet)
    exit_code: int  # 0 complete, 2 partial
    expected: int
    embedded: int
    missing: int
    failed: int
    failed_ranks: list[int]
    report: dict = field(default_factory=dict)


@dataclass
class RunOutcome:
    """What the compute phase of one run did (empty for a merge-only run)."""

    workers: list = field(default_factory=list)
    scheduler: Scheduler | None = None
    outputs: dict = field(default_factory=dict)  # {"outputs": [...], "dim": D} from workers
    planned: int = 0
    todo: int = 0
    reused: int = 0
    missing: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    missing_reasons: list[str] = field(default_factory=list)
    input_check: dict = field(default_factory=dict)  # engine/inputkind.py
    quarantined: list[dict] = field(default_factory=list)  # unit files moved to work/quarantine
    failed_retried: int = 0  # failed sequences made pending by --retry-failed


def _tsv(path: Path, header: str, rows: list[tuple]) -> None:
    lines = [header] + ["\t".join(str(v) for v in row) for row in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")


def _open(
    files: list[Path], out_dir: Path, spec: EmbedderSpec
) -> tuple[RunDir, SequenceIndex, dict]:
    """Index the inputs and check they suit the model; a bad input leaves no output behind."""
    created = not out_dir.exists()
    rd = RunDir(out_dir)
    try:
        rd.work.mkdir(parents=True, exist_ok=True)
        index = build_or_load([Path(f) for f in files], rd.index)
        input_check = check_input_kind(index, spec)
    except VirnucproError:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    rd.create()
    return rd, index, input_check


class _RunLog:
    """Attach ``logs/run.log`` to the package logger for the duration of a job."""

    def __init__(self, rd: RunDir) -> None:
        self.handler = QuietFileHandler(rd.logs / "run.log")
        self.handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
        )
        self.logger = logging.getLogger("virnucpro")

    def __enter__(self) -> None:
        self.logger.addHandler(self.handler)
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)  # run.log records INFO; terminal handlers filter

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()


def run_embedding_job(
    files: list[Path],
    out_dir: Path,
    spec: EmbedderSpec,
    options: EngineOptions,
    *,
    desc: str = "embedding",
) -> JobResult:
    """Embed every sequence of ``files`` into ``out_dir/embeddings.h5`` (see RunDir).

    ``out_dir`` is claimed for the run (engine/claim.py): absent, empty or an embed run
    directory, and used by one run at a time. A full or read-only disk anywhere raises
    DiskError (one line naming the path).
    """
    shard = shard_label(options.shard)
    claim = claim_run_dir(out_dir, "embed", restart=options.restart, shard=shard)
    with claim, disk_errors(Path(out_dir)):
        return _run_embedding_job(files, out_dir, spec, options, desc=desc)


def _run_embedding_job(
    files: list[Path],
    out_dir: Path,
    spec: EmbedderSpec,
    options: EngineOptions,
    *,
    desc: str = "embedding",
) -> JobResult:
    started = time.time()
    rd, index, input_check = _open(files, Path(out_dir), spec)
    with _RunLog(rd):
        timings = {"index": time.time() - started}
        if index.skipped:
            _tsv(
                rd.skipped,
                "id\tfile\tline\treason",
                [(s.id, s.file, s.line, s.reason) for s in index.skipped],
            )
        state = JobState(rd)
        description = describe_job(index, spec)
        state.check(description, options.restart)
        retried = forget_failures(rd.units) if options.retry_failed else 0
        if options.shard is None and state.complete:
            log.info("%s is already complete; nothing to do", rd.output)
            _clean_work(rd, options.keep_work)
            report = state.previous.get("report", {})
            return JobResult(rd.output, 0, len(index), len(index), 0, 0, [], report)
        run_number = state.start(description, spec)
        compute_started = time.time()
        outcome = _compute(index, rd, spec, options, desc, run_number, started, timings)
        outcome.input_check = input_check
        outcome.failed_retried = retried
        timings["compute"] = time.time() - compute_started
        if options.shard is not None:
            return _finish_shard(index, rd, state, spec, options, outcome, started, timings)
        return _finish(index, rd, state, spec, options, outcome, started, timings, run_number)


def merge_job(out_dir: Path, *, strict: bool = False, quiet: bool = False) -> JobResult:
    """Merge and validate the shards computed in ``out_dir`` (``virnucpro merge``)."""
    with claim_run_dir(out_dir, "embed"), disk_errors(Path(out_dir)):
        return _merge_job(out_dir, strict=strict, quiet=quiet)


def _merge_job(out_dir: Path, *, strict: bool = False, quiet: bool = False) -> JobResult:
    started = time.time()
    rd = RunDir(Path(out_dir))
    state = JobState(rd)
    spec = state.spec()
    files = [Path(f["path"]) for f in state.previous["job"]["inputs"]]
    _, index, input_check = _open(files, rd.root, spec)
    with _RunLog(rd):
        description = describe_job(index, spec)
        state.check(description, restart=False)
        outcome = RunOutcome(input_check=input_check)
        outcome.quarantined = _quarantine(rd, index, job_tag(description))
        done, failed = _committed(rd, index)
        records = state.shard_records()
        for record in records:
            outcome.missing = np.concatenate(
                [outcome.missing, np.array(record["missing_positions"], np.int64)]
            )
            outcome.missing_reasons += record["missing_reasons"]
        covered = np.zeros(len(index), bool)
        covered[done] = covered[failed] = True
        covered[outcome.missing] = True
        if not covered.all():
            raise VirnucproError(
                _missing_shards_message(records, int((~covered).sum()), len(index))
            )
        options = EngineOptions(devices=[], strict=strict, quiet=quiet)
        return _finish(
            index,
            rd,
            state,
            spec,
            options,
            outcome,
            started,
            {"index": time.time() - started},
            state.runs,
        )


def _missing_shards_message(records: list[dict], uncovered: int, total: int) -> str:
    if not records:
        return f"no shard has been computed here yet ({uncovered} of {total} sequences missing)"
    n = records[0]["shard"][1]
    seen = {r["shard"][0]: r for r in records if r["shard"][1] == n}
    absent = [f"{i}/{n}" for i in range(n) if i not in seen]
    unfinished = [f"{i}/{n}" for i, r in sorted(seen.items()) if r["status"] == "running"]
    parts = []
    if absent:
        parts.append(f"shard(s) {', '.join(absent)} missing")
    if unfinished:
        parts.append(f"shard(s) {', '.join(unfinished)} did not finish")
    detail = "; ".join(parts) or "some units are not committed"
    return (
        f"cannot merge: {detail} ({uncovered} of {total} sequences not computed); run them "
        "with --shard I/N, then merge again"
    )


def _plan(index, spec, options: EngineOptions, done_or_failed: np.ndarray, run_number: int):
    costs = planning_tokens(spec, index.lengths)
    unit_tokens = options.unit_tokens or default_unit_tokens(
        int(costs.sum()), options.tokens_per_batch
    )
    if options.shard is None:
        units = plan_units(index.order, costs, unit_tokens)
        prefix = "u"
    else:
        i, n = options.shard
        units = plan_units(index.stride(i, n), costs, unit_tokens)
        prefix = f"s{i}of{n}-u"
    computed = np.zeros(len(index), dtype=bool)
    computed[done_or_failed] = True
    todo = []
    for number, unit in enumerate(units):
        left = unit.positions[~computed[unit.positions]]
        if left.size == len(unit):
            todo.append(Unit(unit_key(prefix, number, left), left, unit.tokens))
        elif left.size:  # partly committed before (another plan, or a split unit)
            todo.append(
                Unit(unit_key(prefix, number, left), left, unit.tokens * left.size // len(unit))
            )
    return units, todo, unit_tokens


def unit_key(prefix: str, number: int, positions: np.ndarray) -> str:
    """A unit's key names its positions (a digest), so a unit of another plan (another
    --tokens-per-batch or --unit-tokens) never takes the file name of a committed unit."""
    digest = hashlib.sha256(np.asarray(positions, dtype="<i8").tobytes()).hexdigest()[:12]
    return f"{prefix}{number:06d}-{digest}"


def make_backend(options: EngineOptions, make_config):
    if options.backend == "ray":
        from virnucpro.engine.ray_backend import RayBackend

        return RayBackend(
            options.devices,
            make_config,
            max_retries=options.max_retries,
            worker_timeout=options.worker_timeout,
            address=options.ray_address,
        )
    if options.backend != "local":
        raise VirnucproError(f"--backend must be local or ray, not {options.backend!r}")
    from virnucpro.engine.local import LocalBackend  # torch: only when something is computed

    return LocalBackend(
        options.devices,
        make_config,
        max_retries=options.max_retries,
        worker_timeout=options.worker_timeout,
    )


def _quarantine(rd: RunDir, index, tag: str) -> list[dict]:
    """Move damaged or foreign unit files to work/quarantine/ (their sequences are redone)."""
    return [q.record() for q in check_units(rd.units, rd.work / "quarantine", index, tag)]


def _compute(index, rd, spec, options, desc, run_number, started, timings) -> RunOutcome:
    tag = job_tag(describe_job(index, spec))
    quarantined = _quarantine(rd, index, tag)
    unit_files = _unit_files(rd)
    done, failed = _committed(rd, index)
    units, todo, unit_tokens = _plan(
        index, spec, options, np.concatenate([done, failed]), run_number
    )
    outcome = RunOutcome(planned=len(units), todo=len(todo), reused=len(unit_files))
    outcome.quarantined = quarantined
    log.info(
        "stage %s: %d sequences, %d units (%d tokens each), %d unit files reused, %d to compute "
        "on %s",
        desc,
        len(index),
        len(units),
        unit_tokens,
        len(unit_files),
        len(todo),
        ",".join(options.devices) or "-",
    )
    scheduler = Scheduler(todo, max_retries=options.max_retries)
    outcome.scheduler = scheduler
    if not todo:
        return outcome

    from virnucpro.engine.worker import WorkerConfig

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
            job=tag,
        )

    backend = make_backend(options, make_config)
    progress = Progress(
        sum(len(u) for u in todo),
        desc=desc,
        quiet=options.quiet,
        tokens=sum(u.tokens for u in todo),
    )
    try:
        outcome.workers = backend.run(scheduler, progress)
    except Interrupted as exc:
        outcome.workers = backend.workers
        _persist_failures(rd, scheduler, tag)
        report = build_report(index, spec, options, outcome, started, timings, status="interrupted")
        atomic_write_json(rd.report, report)
        exc.work_dir = rd.work
        raise
    finally:
        progress.close()
    outcome.outputs = backend.outputs
    _persist_failures(rd, scheduler, tag)
    outcome.missing, outcome.missing_reasons = scheduler.lost_positions("missing")
    return outcome


def _committed(rd: RunDir, index) -> tuple[np.ndarray, np.ndarray]:
    """(embedded, failed) positions: unit files plus what an interrupted merge holds."""
    merged = merged_positions(rd.work / MERGE_STATE)
    return committed_positions(_unit_files(rd), len(index), merged)


def _clean_work(rd: RunDir, keep_work: bool) -> None:
    """After a complete run: no unit files, no merge state, no index (unless ``keep_work``)."""
    remove_own(rd.units, "*.h5")  # committed units, now merged; nothing that is not ours
    clear_merge_state(rd.work / MERGE_STATE)
    if not keep_work:
        shutil.rmtree(rd.index, ignore_errors=True)


def _unit_files(rd: RunDir) -> list[Path]:
    return sorted(p for p in rd.units.glob("*.h5") if not p.name.startswith("."))


def _persist_failures(rd: RunDir, scheduler: Scheduler, tag: str) -> None:
    """Isolated poison sequences are committed as failure records, so resume skips them."""
    for lost in scheduler.lost:
        if lost.kind != "failed":
            continue
        key = f"{lost.unit.key}-failed"
        if (rd.units / f"{key}.h5").exists():
            continue
        write_unit(
            rd.units,
            UnitResult(
                key=key,
                positions=np.zeros(0, np.int64),
                ids=[],
                lengths=np.zeros(0, np.int64),
                truncated=np.zeros(0, bool),
                vectors={},
                failed_positions=lost.unit.positions.astype(np.int64),
                failed_reasons=[lost.reason] * len(lost.unit),
            ),
            job=tag,
        )


def _failed_rows(index, unit_files: list[Path]) -> tuple[np.ndarray, list[str]]:
    positions: list[int] = []
    reasons: list[str] = []
    for path in unit_files:
        unit = read_unit(path, verify=False)
        positions.extend(unit.failed_positions.tolist())
        reasons.extend(unit.failed_reasons)
    return np.array(positions, dtype=np.int64), reasons


def _account(index, done: np.ndarray, failed: np.ndarray, missing: np.ndarray) -> None:
    """Every indexed sequence is exactly one of embedded, failed or missing."""
    seen = np.zeros(len(index), dtype=np.int64)
    for group in (done, failed, missing):
        np.add.at(seen, group, 1)
    bad = np.flatnonzero(seen != 1)
    if bad.size:
        raise VirnucproError(
            f"internal accounting error: {bad.size} sequence(s) not accounted for exactly once "
            f"(first: {index.ids[int(bad[0])]}); the output was not written"
        )


def _finish_shard(index, rd, state, spec, options, outcome, started, timings) -> JobResult:
    i, n = options.shard
    stride = index.stride(i, n)
    done, failed = _committed(rd, index)
    in_shard = np.zeros(len(index), bool)
    in_shard[stride] = True
    embedded, n_failed = int(in_shard[done].sum()), int(in_shard[failed].sum())
    missing = outcome.missing
    status = "partial" if (missing.size or n_failed) else "complete"
    counts = {
        "expected": int(stride.size),
        "embedded": embedded,
        "failed": n_failed,
        "missing": int(missing.size),
    }
    state.write_shard(options.shard, status, missing, outcome.missing_reasons, counts)
    report = build_report(index, spec, options, outcome, started, timings, status=f"shard {status}")
    report["counts"].update(counts)
    report["input_check"] = outcome.input_check
    atomic_write_json(rd.root / f"run.shard{i}of{n}.json", report)
    failed_ranks = [w.rank for w in outcome.workers if w.status == "failed"]
    return JobResult(
        None,
        2 if status == "partial" else 0,
        int(stride.size),
        embedded,
        int(missing.size),
        n_failed,
        failed_ranks,
        report,
    )


def _finish(index, rd, state, spec, options, outcome, started, timings, runs) -> JobResult:
    unit_files = _unit_files(rd)
    done, _ = _committed(rd, index)
    failed_pos, failed_why = _failed_rows(index, unit_files)
    missing = outcome.missing
    _account(index, done, failed_pos, missing)
    partial = bool(failed_pos.size or missing.size)
    for path, positions, reasons in (
        (rd.missing, missing, outcome.missing_reasons),
        (rd.failed, failed_pos, failed_why),
    ):
        if positions.size:
            rows = sorted(zip(positions.tolist(), reasons, strict=True))
            _tsv(path, "id\treason", [(index.ids[p], r) for p, r in rows])
        else:
            path.unlink(missing_ok=True)
    status = "partial" if partial else "complete"
    report = build_report(
        index,
        spec,
        options,
        outcome,
        started,
        timings,
        status=status,
        embedded=int(done.size),
        missing=int(missing.size),
        failed=int(failed_pos.size),
    )
    report["input_check"] = outcome.input_check
    report["units"]["failed_retried"] = outcome.failed_retried
    if partial and options.strict:
        report["status"] = "failed (strict)"
        atomic_write_json(rd.report, report)
        raise VirnucproError(
            f"{missing.size} sequence(s) missing and {failed_pos.size} failed (see "
            f"{rd.missing.name} / {rd.failed.name}); --strict: no output written"
        )
    outputs, dim = _output_shape(unit_files, outcome, rd.output)
    if outputs is None:
        atomic_write_json(rd.report, report)
        reasons = (
            "; ".join(d for w in outcome.workers for d in w.deaths[-1:]) or "no worker started"
        )
        raise VirnucproError(f"no sequence could be embedded: {reasons}")
    merge_started = time.time()
    result = merge_units(
        index,
        unit_files,
        rd.output,
        outputs=outputs,
        dim=dim,
        per_token=spec.per_token,
        attrs={
            **attributes(index, spec, outcome.workers),
            "status": status,  # complete | partial: what a reader of this file alone needs
            "expected": len(index),
            "embedded": int(done.size),
            "missing": int(missing.size),
            "failed": int(failed_pos.size),
        },
        consume=None if partial else rd.work / MERGE_STATE,
        disk_root=rd.root,
    )
    timings["merge"] = time.time() - merge_started
    report["counts"]["truncated"] = result.truncated
    report["outputs"] = {"embeddings": str(rd.output), "datasets": outputs, "dim": dim}
    atomic_write_json(rd.report, report)
    state.write(describe_job(index, spec), spec, status, runs=runs, report=report)
    if not partial:
        _clean_work(rd, options.keep_work)
    report["disk"] = {
        "peak_bytes": result.peak_disk,
        "final_bytes": disk_bytes(rd.root),
        "output_bytes": disk_bytes(rd.output),
    }
    atomic_write_json(rd.report, report)
    failed_ranks = [w.rank for w in outcome.workers if w.status == "failed"]
    return JobResult(
        rd.output,
        2 if partial else 0,
        len(index),
        int(done.size),
        int(missing.size),
        int(failed_pos.size),
        failed_ranks,
        report,
    )


def _output_shape(
    unit_files: list[Path], outcome: RunOutcome, rd_output: Path | None = None
) -> tuple[list[str] | None, int]:
    if outcome.outputs:
        return list(outcome.outputs["outputs"]), int(outcome.outputs["dim"])
    import h5py

    for path in unit_files:
        with h5py.File(path, "r") as f:
            names = list(f["vectors"])
            if names:
                return names, int(f["vectors"][names[0]].shape[1])
    merged = merged_shape(rd_output) if rd_output is not None else None
    return merged if merged is not None else (None, 0)
