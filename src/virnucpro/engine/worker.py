"""The worker process: load the model once, then turn units into committed unit files.

Protocol over a duplex pipe. Parent -> worker: ``("unit", key, positions)`` or ``("stop",)``.
Worker -> parent: ``("loading", pid)`` (imports done), ``("ready", info)``,
``("batch", key, n_seqs, n_tokens, n_slots)``, ``("done", key, count, stats)``, ``("stopped",)``,
``("error", key_or_None, message)``, ``("disk", key_or_None, message)`` (a full or read-only
disk: the run stops, nothing is retried).
Every message doubles as a heartbeat.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import torch

from virnucpro.engine.batching import computed_slots, token_budget_batches
from virnucpro.engine.hooks import OutOfMemoryError, TestHooks, during_load
from virnucpro.engine.overlap import Prefetcher, overlap_enabled
from virnucpro.engine.unitfile import UnitResult, write_unit
from virnucpro.errors import ValidationError, VirnucproError
from virnucpro.io.diskerrors import QuietFileHandler, disk_error, is_disk_error
from virnucpro.models.base import Embedder, EmbedderSpec, load_embedder

MIN_TOKENS_PER_BATCH = 64


@dataclass(frozen=True)
class WorkerConfig:
    rank: int
    device: str  # a torch device string: "cpu" or "cuda:N" (N in the parent's visible list)
    threads: int | None
    spec: EmbedderSpec
    index_dir: str
    units_dir: str
    log_path: str
    tokens_per_batch: int
    job: str = ""  # the job tag written into every unit file (jobstate.job_tag)


class StopRequested(Exception):
    """The parent asked the worker to stop at the next batch boundary."""


def setup_worker_logging(path: str, rank: int) -> logging.Logger:
    logger = logging.getLogger(f"virnucpro.worker.{rank}")
    logger.setLevel(logging.INFO)
    handler = QuietFileHandler(path)  # a full disk must not print tracebacks on stderr
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    return logger


class UnitRunner:
    """Embeds the sequences of units with token-budget batches, splitting on out-of-memory."""

    def __init__(
        self,
        config: WorkerConfig,
        embedder: Embedder,
        log: logging.Logger,
        *,
        on_batch: Callable[[str, int, int, int], None] = lambda *_: None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        from virnucpro.io.index import SequenceIndex

        self.config = config
        self.embedder = embedder
        self.log = log
        self.on_batch = on_batch  # (unit key, sequences, real tokens, padded slots)
        self.should_stop = should_stop  # checked at every batch boundary
        self.index = SequenceIndex.open(config.index_dir)
        self.hooks = TestHooks(config.rank, log)
        self.budget = config.tokens_per_batch
        self.overlap = overlap_enabled(embedder.device)
        self.oom_splits = 0
        self.stats: dict = {}

    def commit(self, key: str, positions: np.ndarray) -> int:
        """Compute a unit and commit its file; returns the number of rows committed."""
        result = self.run(key, positions)
        write_unit(Path(self.config.units_dir), result, job=self.config.job)
        self.log.info("unit %s committed: %s", key, self.stats)
        return len(result)

    def run(self, key: str, positions: np.ndarray) -> UnitResult:
        started = time.perf_counter()
        splits_before = self.oom_splits
        ids = [self.index.ids[p] for p in positions.tolist()]
        seqs = [self.embedder.residues(s) for s in self.index.sequences(positions)]
        encoded = [self.embedder.encode(s) for s in seqs]
        n = len(ids)
        vectors = {
            name: np.zeros((n, self.embedder.dim), np.float32)
            for name in self.embedder.output_names
        }
        per_token: dict[str, list[np.ndarray | None]] | None = (
            {name: [None] * n for name in self.embedder.output_names}
            if self.config.spec.per_token
            else None
        )
        ok = np.ones(n, dtype=bool)
        failures: list[tuple[int, str]] = []
        tokens = slots = 0
        packed = self.embedder.packed
        batches = token_budget_batches([len(e) for e in encoded], self.budget, packed)
        with Prefetcher(
            batches,
            lambda b: self.embedder.prepare([encoded[i] for i in b]),
            enabled=self.overlap,
        ) as prefetched:  # batch k+1 prepared while batch k runs (CUDA; engine/overlap.py)
            for batch, prepared in prefetched:
                if self.should_stop():
                    raise StopRequested
                ahead = prepared if self.overlap else None  # off: plain embedder.forward
                self._embed(batch, ids, encoded, vectors, per_token, ok, failures, ahead)
                sizes = [len(encoded[i]) for i in batch]
                real, width = sum(sizes), computed_slots(sizes, packed)
                tokens += real
                slots += width
                self.on_batch(key, len(batch), real, width)
        keep = np.flatnonzero(ok)
        result = UnitResult(
            key=key,
            positions=positions[keep].astype(np.int64),
            ids=[ids[i] for i in keep.tolist()],
            lengths=np.array([len(seqs[i]) for i in keep.tolist()], dtype=np.int64),
            truncated=np.array(
                [self.embedder.truncated(len(seqs[i])) for i in keep.tolist()], bool
            ),
            vectors={name: array[keep] for name, array in vectors.items()},
            per_token={
                name: [blocks[i] for i in keep.tolist()] for name, blocks in per_token.items()
            }
            if per_token is not None
            else None,
            failed_positions=np.array([positions[i] for i, _ in failures], dtype=np.int64),
            failed_reasons=[reason for _, reason in failures],
        )
        self.stats = {
            "seconds": time.perf_counter() - started,
            "tokens": tokens,
            "slots": slots,
            "oom_splits": self.oom_splits - splits_before,
            "tokens_per_batch": self.budget,
        }
        return result

    def _embed(self, batch, ids, encoded, vectors, per_token, ok, failures, prepared=None) -> None:
        """Forward one batch; on out-of-memory, halve the budget and split the batch."""
        try:
            self.hooks.before_batch([ids[i] for i in batch])  # may simulate out-of-memory
            if prepared is None:
                output = self.embedder.forward([encoded[i] for i in batch])
            else:
                output = self.embedder.forward_prepared(prepared())
        except OutOfMemoryError:
            if self.embedder.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(batch) == 1:
                i = batch[0]
                ok[i] = False
                alone = (
                    f"out of memory on a batch of this sequence alone ({len(encoded[i])} tokens)"
                )
                failures.append((i, alone))
                self.log.warning("out of memory on %s alone (%d tokens)", ids[i], len(encoded[i]))
                return
            self.oom_splits += 1
            self.budget = max(MIN_TOKENS_PER_BATCH, self.budget // 2)
            self.log.warning(
                "out of memory on a batch of %d sequences; split, tokens per batch now %d",
                len(batch),
                self.budget,
            )
            half = len(batch) // 2
            self._embed(batch[:half], ids, encoded, vectors, per_token, ok, failures)
            self._embed(batch[half:], ids, encoded, vectors, per_token, ok, failures)
            return
        _check_rows(output, len(batch), per_token is not None)
        for name, array in output.pooled.items():
            vectors[name][batch] = array
        blocks_by_output = output.per_token_by_output()
        if per_token is not None and blocks_by_output is not None:
            for name, blocks in blocks_by_output.items():
                for j, i in enumerate(batch):
                    per_token[name][i] = blocks[j]


def _check_rows(output, sequences: int, per_token: bool) -> None:
    """One vector (and, if asked, one per-token block) per sequence of the batch, or an error:
    numpy would broadcast a short result into every row without a word."""
    counts = {name: len(array) for name, array in output.pooled.items()}
    if per_token:
        by_output = output.per_token_by_output() or {}
        for name in output.pooled:
            counts[f"per_token {name}"] = len(by_output.get(name, []))
    wrong = {name: n for name, n in counts.items() if n != sequences}
    if wrong:
        raise ValidationError(
            f"the model returned {wrong} rows for a batch of {sequences} sequences"
        )


def prepare_device(config: WorkerConfig) -> torch.device:
    """Threads and device of a worker (shared by every backend)."""
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def worker_main(config: WorkerConfig, conn: Connection) -> None:
    """Entry point of a worker process (spawned)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates shutdown
    log = setup_worker_logging(config.log_path, config.rank)
    log.info("worker %d started (pid %d) on %s", config.rank, os.getpid(), config.device)
    key = None
    try:
        conn.send(("loading", os.getpid()))  # a heartbeat: imports are done, the load starts
        during_load(config.rank, log)
        embedder = load_embedder(config.spec, prepare_device(config))
        stop_seen = []

        def should_stop() -> bool:
            while not stop_seen and conn.poll():
                if conn.recv()[0] == "stop":
                    stop_seen.append(True)
            return bool(stop_seen)

        runner = UnitRunner(
            config,
            embedder,
            log,
            on_batch=lambda *m: conn.send(("batch", *m)),
            should_stop=should_stop,
        )
        info = {
            "pid": os.getpid(),
            "device": config.device,
            "dim": embedder.dim,
            "outputs": list(embedder.output_names),
            "dtype": str(embedder.dtype).replace("torch.", ""),
            "describe": embedder.describe(),
        }
        log.info("model loaded: %s", info)
        conn.send(("ready", info))
        while True:
            message = conn.recv()
            if message[0] == "stop":
                break
            _, key, positions = message
            log.info("unit %s: %d sequences", key, len(positions))
            try:
                count = runner.commit(key, positions)
            except StopRequested:
                log.info("stop requested during unit %s; it is not committed", key)
                break
            conn.send(("done", key, count, runner.stats))
            key = None
        conn.send(("stopped",))
        log.info("worker %d stopped", config.rank)
        _exit_without_teardown(conn)
    except (VirnucproError, OutOfMemoryError) as exc:
        log.error("%s", exc)
        _report_error(conn, key, str(exc), disk=is_disk_error(exc))
        raise SystemExit(1) from None
    except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent
        if is_disk_error(exc):  # a full or read-only disk: one line, never retried
            message = str(disk_error(exc, config.units_dir))
            log.error("%s", message)
            _report_error(conn, key, message, disk=True)
            raise SystemExit(1) from None
        log.error("unexpected error:\n%s", traceback.format_exc())
        _report_error(conn, key, f"{type(exc).__name__}: {exc}")
        raise SystemExit(1) from None


def _exit_without_teardown(conn: Connection) -> None:
    """Leave now, skipping the interpreter's teardown (about 0.7 s with torch loaded).

    Every unit is committed (fsynced) and reported before this point, and the log is flushed
    here, so nothing is lost; the parent, which joins this process, can merge sooner.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    conn.close()
    os._exit(0)


def _report_error(conn: Connection, key: str | None, message: str, *, disk: bool = False) -> None:
    try:
        conn.send(("disk" if disk else "error", key, message))
    except (OSError, ValueError):
        pass
