"""Inside a Ray actor: load the model once, then compute and commit units on request.

The driver (``engine/ray_backend.py``) creates one ``UnitActor`` per device entry and calls
it one unit at a time; the actor runs the same ``UnitRunner`` as a local worker and writes the
same unit files and worker log.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback

import numpy as np

from virnucpro.engine.hooks import OutOfMemoryError
from virnucpro.engine.worker import (
    StopRequested,
    UnitRunner,
    WorkerConfig,
    prepare_device,
    setup_worker_logging,
)
from virnucpro.errors import VirnucproError
from virnucpro.io.diskerrors import disk_error, is_disk_error


class UnitActor:
    """Runs in a Ray actor: loads the model once, then commits units with a UnitRunner.

    Replies are tagged like the local worker's messages: ``("ready", info)``,
    ``("done", count, stats, n_batches, tokens, slots)``, ``("stopped",)`` or
    ``("error", message)`` or ``("disk", message)`` (a full or read-only disk). The actor is
    threaded (two calls at a time) so that ``stop`` and ``idle_seconds`` are answered while a
    unit is being computed.
    """

    def __init__(self, config: WorkerConfig) -> None:
        self.stop_requested = threading.Event()
        self.last_activity = time.monotonic()
        self.batches = 0
        self.error: str | None = None
        self.info: dict = {}
        self.runner: UnitRunner | None = None
        try:
            self.log = setup_worker_logging(config.log_path, config.rank)
        except OSError as exc:
            self.log = logging.getLogger(f"virnucpro.worker.{config.rank}")
            self.error = (
                f"cannot write the worker log {config.log_path} on this node ({exc.strerror}); "
                "the run directory must be on storage every Ray node can reach"
            )
            return
        self.log.info(
            "worker %d started (pid %d) on %s (Ray actor)", config.rank, os.getpid(), config.device
        )
        try:
            self._load(config)
        except Exception as exc:  # noqa: BLE001 - reported to the driver
            self.error = _describe(exc)
            self.log.error("model loading failed:\n%s", traceback.format_exc())

    def _load(self, config: WorkerConfig) -> None:
        from virnucpro.models.base import load_embedder

        embedder = load_embedder(config.spec, prepare_device(config))
        self.runner = UnitRunner(
            config,
            embedder,
            self.log,
            on_batch=self._on_batch,
            should_stop=self.stop_requested.is_set,
        )
        self.info = {
            "pid": os.getpid(),
            "device": config.device,
            "node": _node_address(),
            "dim": embedder.dim,
            "outputs": list(embedder.output_names),
            "dtype": str(embedder.dtype).replace("torch.", ""),
            "describe": embedder.describe(),
        }
        self.log.info("model loaded: %s", self.info)

    def _on_batch(self, *_: object) -> None:
        self.batches += 1
        self.last_activity = time.monotonic()

    def ready(self) -> tuple:
        if self.error is not None:
            return ("error", self.error)
        return ("ready", self.info)

    def run_unit(self, key: str, positions: np.ndarray) -> tuple:
        """Compute unit ``key`` and commit its file (see ``UnitRunner.commit``)."""
        self.last_activity = time.monotonic()
        self.batches = 0
        if self.stop_requested.is_set():
            return ("stopped",)
        self.log.info("unit %s: %d sequences", key, len(positions))
        try:
            count = self.runner.commit(key, positions)
        except StopRequested:
            self.log.info("stop requested during unit %s; it is not committed", key)
            return ("stopped",)
        except Exception as exc:  # noqa: BLE001 - reported to the driver, which replaces us
            if is_disk_error(exc):  # a full or read-only disk: the driver stops the run
                message = str(disk_error(exc, self.runner.config.units_dir))
                self.log.error("%s", message)
                return ("disk", message)
            self.log.error("unit %s failed:\n%s", key, traceback.format_exc())
            return ("error", _describe(exc))
        stats = self.runner.stats
        return ("done", count, stats, self.batches, stats["tokens"], stats["slots"])

    def idle_seconds(self) -> float:
        """Seconds since the current unit started or its last batch finished (heartbeat)."""
        return time.monotonic() - self.last_activity

    def stop(self) -> None:
        """Stop at the next batch boundary; the unit in progress is not committed."""
        self.stop_requested.set()


def _node_address() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - informative only
        return ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (VirnucproError, OutOfMemoryError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
