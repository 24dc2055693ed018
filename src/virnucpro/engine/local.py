"""The local backend: one spawned worker process per device, coordinated over pipes.

The parent hands out units one at a time, watches every worker's pipe and process sentinel,
kills workers that stop sending heartbeats, respawns dead ones while retries allow, and turns
SIGINT/SIGTERM into a stop at the next batch boundary (a second signal stops at once).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from virnucpro.engine.interrupted import Interrupted
from virnucpro.engine.progress import Progress
from virnucpro.engine.scheduler import Scheduler
from virnucpro.engine.worker import WorkerConfig, worker_main
from virnucpro.io.diskerrors import DiskError

log = logging.getLogger("virnucpro.engine")

ISOLATION_ALLOWANCE = 20  # extra consecutive deaths a rank may see while a poison unit is split
MIN_STARTUP_SECONDS = 120.0  # a worker's start-up (imports, model load) gets at least this long


def startup_budget(worker_timeout: float | None) -> float | None:
    """Seconds a starting worker may stay silent (spawn and imports, then the model load).

    ``VIRNUCPRO_STARTUP_TIMEOUT`` sets it; otherwise it is ``--worker-timeout`` but at least
    MIN_STARTUP_SECONDS, and never (None) when the worker timeout is off.
    """
    value = os.environ.get("VIRNUCPRO_STARTUP_TIMEOUT", "")
    if value:
        seconds = float(value)
        return seconds if seconds > 0 else None
    if not worker_timeout:
        return None
    return max(float(worker_timeout), MIN_STARTUP_SECONDS)


@dataclass
class WorkerState:
    """What the parent knows about one rank."""

    rank: int
    device: str
    process: mp.process.BaseProcess | None = None
    conn: Connection | None = None
    status: str = "starting"  # starting, idle, busy, stopped, failed
    last_seen: float = 0.0
    pid: int | None = None
    info: dict = field(default_factory=dict)
    last_error: str | None = None
    deaths: list[str] = field(default_factory=list)
    consecutive_deaths: int = 0
    respawns: int = 0
    units_done: int = 0
    sequences: int = 0
    tokens: int = 0
    slots: int = 0
    oom_splits: int = 0

    @property
    def alive(self) -> bool:
        return self.status in ("starting", "idle", "busy")

    def report(self) -> dict:
        return {
            "rank": self.rank,
            "device": self.device,
            "status": self.status,
            "units": self.units_done,
            "sequences": self.sequences,
            "tokens": self.tokens,
            "padded_slots": self.slots,
            "respawns": self.respawns,
            "deaths": self.deaths,
            "oom_splits": self.oom_splits,
            "dtype": self.info.get("dtype"),
        }


def describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "did not exit"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def record_death(
    worker: WorkerState, reason: str, scheduler: Scheduler, max_retries: int, stopping: bool
) -> bool:
    """Book a worker's death (its in-flight unit goes back to the scheduler or is lost).

    Returns True when the rank may be respawned; otherwise it is marked failed. Both backends
    use this rule, so a rank fails after the same number of consecutive deaths everywhere.
    """
    worker.deaths.append(reason)
    worker.consecutive_deaths += 1
    unit = scheduler.worker_lost(worker.rank, reason)
    lost = f" while computing unit {unit.key} ({len(unit)} sequences)" if unit else ""
    log.warning("%s%s", reason, lost)  # the terminal handler shows it unless --quiet
    limit = 2 * (max_retries + 1) + ISOLATION_ALLOWANCE
    if max_retries > 0 and not stopping and worker.consecutive_deaths < limit:
        worker.respawns += 1
        return True
    worker.status = "failed"
    return False


def live_workers(
    workers: list[WorkerState], scheduler: Scheduler, stopping: bool
) -> list[WorkerState] | None:
    """The live workers, or None when the main loop should end (stopped and idle, or none left)."""
    live = [w for w in workers if w.alive]
    if stopping and all(w.status != "busy" for w in live):
        return None
    if not live:
        scheduler.abandon_pending("no worker left: every rank failed")
        return None
    return live


def announce_stop(signum: int) -> None:
    """The message for the first SIGINT/SIGTERM (both backends)."""
    log.warning(
        "%s received: workers stop at the next batch boundary and committed work is "
        "kept; send it again to stop at once",
        signal.Signals(signum).name,
    )


class LocalBackend:
    """Runs a scheduler's units on local worker processes."""

    def __init__(
        self,
        devices: list[str],
        make_config: Callable[[int, str], WorkerConfig],
        *,
        max_retries: int = 0,
        worker_timeout: float | None = None,
    ) -> None:
        self.devices = devices
        self.make_config = make_config
        self.max_retries = max_retries
        self.worker_timeout = worker_timeout
        self.startup_timeout = startup_budget(worker_timeout)
        self.ctx = mp.get_context("spawn")
        self.workers = [WorkerState(rank, device) for rank, device in enumerate(devices)]
        self.stop_signal: int | None = None
        self.stops_sent = False
        self.disk_error: str | None = None  # a worker met a full or read-only disk: stop the run
        self.outputs: dict = {}

    # -- process management -------------------------------------------------------------
    def _start(self, worker: WorkerState) -> None:
        parent, child = self.ctx.Pipe(duplex=True)
        config = self.make_config(worker.rank, worker.device)
        process = self.ctx.Process(
            target=worker_main, args=(config, child), name=f"virnucpro-worker-{worker.rank}"
        )
        process.daemon = True
        process.start()
        child.close()
        worker.process, worker.conn, worker.pid = process, parent, process.pid
        worker.status, worker.last_seen, worker.last_error = "starting", time.monotonic(), None
        log.info("worker %d started on %s (pid %d)", worker.rank, worker.device, process.pid)

    def _send(self, worker: WorkerState, message: tuple) -> bool:
        if worker.conn is None:  # never started (process.start() failed)
            return False
        try:
            worker.conn.send(message)
            return True
        except (OSError, ValueError):
            return False

    def _assign(self, worker: WorkerState, scheduler: Scheduler) -> None:
        if worker.status != "idle" or self.stop_signal or self.disk_error:
            return
        unit = scheduler.next_unit(worker.rank)
        if unit is None:
            return
        worker.status = "busy"
        worker.last_seen = time.monotonic()
        if not self._send(worker, ("unit", unit.key, unit.positions)):
            worker.status = "busy"  # the death is noticed through its sentinel

    # -- messages ---------------------------------------------------------------------------
    def _handle(self, worker: WorkerState, message: tuple, scheduler: Scheduler, progress) -> None:
        kind = message[0]
        worker.last_seen = time.monotonic()
        if kind == "loading":  # started (imports done), about to load the model: a heartbeat
            pass
        elif kind == "ready":
            worker.info = message[1]
            worker.status = "idle"
            self.outputs = {"dim": worker.info["dim"], "outputs": worker.info["outputs"]}
            self._assign(worker, scheduler)
        elif kind == "batch":
            _, _, n, tokens, slots = message
            worker.sequences += n
            worker.tokens += tokens
            worker.slots += slots
            unit = scheduler.in_flight.get(worker.rank)
            progress.update(n, tokens, sum(w.alive for w in self.workers), unit=unit)
        elif kind == "done":
            _, key, _count, stats = message
            unit = scheduler.in_flight.get(worker.rank)
            scheduler.completed(worker.rank, key)
            if unit is not None:
                progress.unit_done(unit)
            worker.units_done += 1
            worker.consecutive_deaths = 0
            worker.oom_splits += stats.get("oom_splits", 0)
            worker.status = "idle"
            self._assign(worker, scheduler)
        elif kind == "error":
            worker.last_error = message[2]
        elif kind == "disk":
            worker.last_error = message[2]
            worker.status = "stopped"  # not a death: nothing is retried or respawned
            scheduler.returned(worker.rank)
            self.disk_error = self.disk_error or message[2]
        elif kind == "stopped":
            scheduler.returned(worker.rank)
            worker.status = "stopped"

    def _drain(self, worker: WorkerState, scheduler: Scheduler, progress) -> None:
        try:
            while worker.conn.poll():
                self._handle(worker, worker.conn.recv(), scheduler, progress)
        except (EOFError, OSError):
            pass  # the process is gone; its sentinel tells

    def _handle_death(self, worker: WorkerState, scheduler: Scheduler, progress) -> None:
        self._drain(worker, scheduler, progress)
        worker.process.join(timeout=5)
        reason = f"worker {worker.rank} ({worker.device}) {describe_exit(worker.process.exitcode)}"
        if worker.last_error:
            reason += f": {worker.last_error}"
        if worker.status == "stopped":
            return
        worker.conn.close()
        if record_death(worker, reason, scheduler, self.max_retries, bool(self.stop_signal)):
            self._start(worker)
        for other in self.workers:
            self._assign(other, scheduler)

    # -- signals ------------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        # The first signal only sets a flag; the main loop logs and sends the stop messages, so
        # nothing is written to a pipe or a stream in the middle of a write of the main thread.
        if self.stop_signal is None:
            self.stop_signal = signum
            return
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGKILL)
        raise Interrupted(self.stop_signal)

    def _stop_on_disk_error(self) -> None:
        """After a disk error, ask the other workers once to stop at their next batch boundary."""
        if self.disk_error is None or self.stops_sent:
            return
        self.stops_sent = True
        for worker in self.workers:
            if worker.alive:
                self._send(worker, ("stop",))

    def _send_stops(self) -> None:
        """After a signal, ask every live worker once to stop at its next batch boundary."""
        if self.stop_signal is None or self.stops_sent:
            return
        self.stops_sent = True
        announce_stop(self.stop_signal)
        for worker in self.workers:
            if worker.alive:
                self._send(worker, ("stop",))

    # -- main loop ------------------------------------------------------------------------------
    def run(self, scheduler: Scheduler, progress: Progress) -> list[WorkerState]:
        """Run until every unit is done or lost; raises Interrupted after a signal."""
        previous = {}
        import threading

        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            for worker in self.workers:
                self._start(worker)
            self._loop(scheduler, progress)
        finally:
            try:
                self._shutdown(scheduler, progress)
            finally:  # a second signal during the shutdown must not leave our handlers in place
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)
        if self.disk_error is not None:
            raise DiskError(self.disk_error)
        return self.workers

    def _loop(self, scheduler: Scheduler, progress: Progress) -> None:
        while not scheduler.finished:
            self._send_stops()
            self._stop_on_disk_error()
            stopping = self.stop_signal is not None or self.disk_error is not None
            live = live_workers(self.workers, scheduler, stopping)
            if live is None:
                return
            by_object: dict = {}
            for worker in live:
                by_object[worker.conn] = worker
                by_object[worker.process.sentinel] = worker
            for obj in wait(list(by_object), timeout=1.0):
                worker = by_object[obj]
                if obj is worker.conn and worker.alive:
                    self._drain(worker, scheduler, progress)
            for worker in live:
                if worker.alive and not worker.process.is_alive():
                    self._handle_death(worker, scheduler, progress)
            self._kill_hung()
            progress.tick()

    def _kill_hung(self) -> None:
        """Kill workers silent for too long: ``worker_timeout`` while computing, the start-up
        budget while starting (spawn and imports until the first message, then the load)."""
        now = time.monotonic()
        for worker in self.workers:
            if worker.status == "busy":
                limit, phase = self.worker_timeout, ""
            elif worker.status == "starting":
                limit, phase = self.startup_timeout, " while starting (import or model load)"
            else:
                continue
            if limit and now - worker.last_seen > limit:
                log.warning(
                    "worker %d sent no heartbeat for %g s%s; killing it", worker.rank, limit, phase
                )
                worker.last_error = f"no heartbeat for {limit:g} s{phase} (hung)"
                os.kill(worker.process.pid, signal.SIGKILL)
                worker.last_seen = now

    def _shutdown(self, scheduler: Scheduler, progress: Progress) -> None:
        for worker in self.workers:
            if worker.alive:
                self._send(worker, ("stop",))
        deadline = time.monotonic() + 30
        for worker in self.workers:
            if worker.process is None:
                continue
            worker.process.join(timeout=max(0.1, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(timeout=5)
            if worker.alive:
                self._drain(worker, scheduler, progress)
                if worker.alive:
                    worker.status = "stopped"
                scheduler.returned(worker.rank)
