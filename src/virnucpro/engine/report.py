"""The machine-readable run report (run.json) and the output file's attributes."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from virnucpro._version import __version__
from virnucpro.models.base import EmbedderSpec


def attributes(index, spec: EmbedderSpec, workers) -> dict:
    """HDF5 attributes: model, revision/checksum, layers, precision, inputs, version, time."""
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


def build_report(
    index,
    spec: EmbedderSpec,
    options,
    outcome,
    started: float,
    timings: dict,
    *,
    status: str,
    embedded: int = 0,
    missing: int = 0,
    failed: int = 0,
) -> dict:
    workers = outcome.workers
    scheduler = outcome.scheduler
    tokens = sum(w.tokens for w in workers)
    slots = sum(w.slots for w in workers)
    compute = timings.get("compute")
    return {
        "virnucpro_version": __version__,
        "status": status,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": spec.fingerprint_fields(),
        "inputs": index.describe(),
        "parameters": {
            "devices": options.devices,
            "backend": options.backend,
            "shard": list(options.shard) if options.shard else None,
            "tokens_per_batch": options.tokens_per_batch,
            "unit_tokens": options.unit_tokens,
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
            "planned": outcome.planned,
            "reused_files": outcome.reused,
            "to_compute": outcome.todo,
            "computed": len(scheduler.done) if scheduler else 0,
            "computed_keys": sorted(scheduler.done) if scheduler else [],
            "retries": scheduler.retries if scheduler else 0,
            "splits": scheduler.splits if scheduler else 0,
            "failed_keys": sorted(x.unit.key for x in scheduler.lost if x.kind == "failed")
            if scheduler
            else [],
            "quarantined": getattr(outcome, "quarantined", []),
        },
        "workers": [w.report() for w in workers],
        "failed_ranks": [w.rank for w in workers if w.status == "failed"],
        "respawns": sum(w.respawns for w in workers),
        "oom_splits": sum(w.oom_splits for w in workers),
        "tokens": tokens,
        "padded_slots": slots,
        "padding_fraction": (slots - tokens) / slots if slots else 0.0,
        "tokens_per_second": tokens / compute if compute else None,
        "seconds": time.time() - started,
        "timings_s": timings,
    }
