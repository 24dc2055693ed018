"""The Ray backend: one long-lived Ray actor per device entry, fed units by the same Scheduler.

This is the driver; the actor is ``engine/ray_actor.py`` and joining or starting Ray is
``engine/ray_session.py`` (Ray is optional, ``pip install 'virnucpro[ray]'``, imported lazily).
The driver hands each ready actor one unit at a time (dynamic pull) and our unit bookkeeping
is the source of truth: Ray never restarts an actor or re-runs a call by itself
(``max_restarts=0``, ``max_task_retries=0``). A dead, failing or hung actor is reported to the
scheduler and replaced under the local backend's respawn rule. Actors read the sequence index
and write unit files and worker logs in the run directory, which every node must reach.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from virnucpro.engine.local import (
    Interrupted,
    WorkerState,
    announce_stop,
    live_workers,
    record_death,
)
from virnucpro.engine.progress import Progress
from virnucpro.engine.ray_actor import UnitActor
from virnucpro.engine.ray_session import RaySession, import_ray, one_line
from virnucpro.engine.scheduler import Scheduler
from virnucpro.engine.units import Unit
from virnucpro.engine.worker import WorkerConfig
from virnucpro.io.diskerrors import DiskError

log = logging.getLogger("virnucpro.engine")

FORWARDED_ENV_PREFIX = "VIRNUCPRO_TEST_"  # fault hooks that must reach the actors
POLL_SECONDS = 1.0
PLACEMENT_WARNING_SECONDS = 120.0


def _ray_cause(exc: BaseException) -> str:
    """The informative part of a Ray error (its message repeats ids, addresses and advice)."""
    lines = [line for line in str(exc).splitlines() if line.strip() and not line.startswith("\t")]
    base = "The actor died unexpectedly before finishing this task."
    text = " ".join(line.strip() for line in lines if line.strip() != base)
    text = text.split(" Some common causes", 1)[0]
    return one_line(text or type(exc).__name__, 200)


@dataclass
class _Call:
    """One call in flight on an actor."""

    worker: WorkerState
    kind: str  # "ready", "unit" or "beat"
    sent: float
    unit: Unit | None = None


def _absolute(config: WorkerConfig, device: str) -> WorkerConfig:
    """Paths that mean the same on every node, and the device as the actor sees it."""
    spec = config.spec
    if os.path.exists(spec.weights):
        spec = dataclasses.replace(spec, weights=os.path.abspath(spec.weights))
    return dataclasses.replace(
        config,
        device=device,
        spec=spec,
        index_dir=os.path.abspath(config.index_dir),
        units_dir=os.path.abspath(config.units_dir),
        log_path=os.path.abspath(config.log_path),
    )


class RayBackend:
    """Runs a scheduler's units on Ray actors, one per device entry (same interface as
    LocalBackend).

    ``cuda:N`` entries become one-GPU actors (inside, the device is ``cuda:0``: Ray sets
    CUDA_VISIBLE_DEVICES); ``cpu`` entries become actors with ``threads`` CPUs. A busy actor
    that finishes no batch for ``worker_timeout`` seconds is killed as hung.
    """

    def __init__(
        self,
        devices: list[str],
        make_config: Callable[[int, str], WorkerConfig],
        *,
        max_retries: int = 0,
        worker_timeout: float | None = None,
        address: str | None = None,
    ) -> None:
        self.ray = import_ray()
        self.devices = devices
        self.make_config = make_config
        self.max_retries = max_retries
        self.worker_timeout = worker_timeout
        self.address = address
        self.workers = [WorkerState(rank, device) for rank, device in enumerate(devices)]
        self.outputs: dict = {}
        self.stop_signal: int | None = None
        self._stops_sent = False
        self.disk_error: str | None = None  # an actor met a full or read-only disk: stop
        self._actors: dict[int, Any] = {}
        self._calls: dict[Any, _Call] = {}
        self._configs = {w.rank: self._config(w) for w in self.workers}
        self._actor_class = None
        self._warned_placement: set[int] = set()
        self._session = RaySession(self.ray, address, self._cpus_needed(), devices)

    # -- actors -------------------------------------------------------------------------------
    def _config(self, worker: WorkerState) -> WorkerConfig:
        inside = "cuda:0" if worker.device.startswith("cuda") else worker.device
        return _absolute(self.make_config(worker.rank, inside), inside)

    def _resources(self, worker: WorkerState) -> dict:
        if worker.device.startswith("cuda"):
            return {"num_gpus": 1, "num_cpus": 1}
        return {"num_gpus": 0, "num_cpus": self._configs[worker.rank].threads or 1}

    def _cpus_needed(self) -> int:
        return sum(self._resources(w)["num_cpus"] for w in self.workers)

    def _start(self, worker: WorkerState) -> None:
        if self._actor_class is None:
            self._actor_class = self.ray.remote(UnitActor)
        env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIX)}
        actor = self._actor_class.options(
            **self._resources(worker),
            max_restarts=0,
            max_task_retries=0,
            max_concurrency=2,
            runtime_env={"env_vars": env} if env else None,
        ).remote(self._configs[worker.rank])
        self._actors[worker.rank] = actor
        worker.status, worker.last_seen, worker.last_error = "starting", time.monotonic(), None
        worker.pid = None
        self._call(worker, "ready", actor.ready.remote())
        log.info("worker %d: Ray actor requested for %s", worker.rank, worker.device)

    def _call(self, worker: WorkerState, kind: str, ref: Any, unit: Unit | None = None) -> None:
        self._calls[ref] = _Call(worker, kind, time.monotonic(), unit)

    def _drop_calls(self, worker: WorkerState) -> None:
        for ref in [r for r, c in self._calls.items() if c.worker is worker]:
            del self._calls[ref]

    def _kill(self, worker: WorkerState) -> None:
        actor = self._actors.pop(worker.rank, None)
        if actor is not None:
            try:
                self.ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def _assign(self, worker: WorkerState, scheduler: Scheduler) -> None:
        if worker.status != "idle" or self.stop_signal is not None or self.disk_error:
            return
        unit = scheduler.next_unit(worker.rank)
        if unit is None:
            return
        worker.status = "busy"
        worker.last_seen = time.monotonic()
        ref = self._actors[worker.rank].run_unit.remote(unit.key, unit.positions)
        self._call(worker, "unit", ref, unit)

    # -- replies ------------------------------------------------------------------------------
    def _handle(self, call: _Call, reply: Any, scheduler: Scheduler, progress: Progress) -> None:
        worker = call.worker
        if call.kind == "beat":
            if self.worker_timeout and worker.status == "busy" and reply > self.worker_timeout:
                self._hung(worker, scheduler)
            return
        tag = reply[0]
        if tag == "disk":  # not a death: nothing is retried or respawned
            worker.last_error = reply[1]
            worker.status = "stopped"
            scheduler.returned(worker.rank)
            self.disk_error = self.disk_error or reply[1]
        elif tag == "error":
            worker.last_error = reply[1]
            self._death(
                worker, f"worker {worker.rank} ({worker.device}) failed: {reply[1]}", scheduler
            )
        elif tag == "ready":
            worker.info = reply[1]
            worker.pid = worker.info.get("pid")
            worker.status = "idle"
            worker.last_seen = time.monotonic()
            self.outputs = {"dim": worker.info["dim"], "outputs": worker.info["outputs"]}
            log.info(
                "worker %d ready on %s (pid %s, node %s)",
                worker.rank,
                worker.device,
                worker.pid,
                worker.info.get("node"),
            )
        elif tag == "stopped":
            scheduler.returned(worker.rank)
            worker.status = "stopped"
        elif tag == "done":
            _, _count, stats, _batches, tokens, slots = reply
            scheduler.completed(worker.rank, call.unit.key)
            worker.units_done += 1
            worker.consecutive_deaths = 0
            worker.sequences += len(call.unit)
            worker.tokens += tokens
            worker.slots += slots
            worker.oom_splits += stats.get("oom_splits", 0)
            worker.status = "idle"
            worker.last_seen = time.monotonic()
            live = sum(w.alive for w in self.workers)
            progress.update(len(call.unit), tokens, live, unit=call.unit)
            progress.unit_done(call.unit, live)

    def _death(self, worker: WorkerState, reason: str, scheduler: Scheduler) -> None:
        """The actor is gone or unusable: lose its unit, then respawn it or fail the rank."""
        self._drop_calls(worker)
        self._kill(worker)
        if worker.status == "stopped" or not worker.alive:
            return
        stopping = self.stop_signal is not None
        if record_death(worker, reason, scheduler, self.max_retries, stopping):
            self._start(worker)

    def _hung(self, worker: WorkerState, scheduler: Scheduler) -> None:
        log.warning(
            "worker %d finished no batch for %g s; killing it", worker.rank, self.worker_timeout
        )
        worker.last_error = f"no heartbeat for {self.worker_timeout:g} s (hung)"
        reason = f"worker {worker.rank} ({worker.device}) killed: {worker.last_error}"
        self._death(worker, reason, scheduler)

    def _actor_died(self, call: _Call, exc: Exception) -> str:
        worker = call.worker
        pid = f"pid {worker.pid}, " if worker.pid else ""
        node = worker.info.get("node") or "?"
        return (
            f"worker {worker.rank} ({worker.device}) Ray actor died ({pid}node {node}): "
            f"{_ray_cause(exc)}"
        )

    # -- signals ------------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        # The first signal only sets a flag (no Ray call inside a signal handler): the loop
        # sends the stops. A second one stops at once; the shutdown kills the actors.
        if self.stop_signal is None:
            self.stop_signal = signum
            return
        raise Interrupted(self.stop_signal)

    def _send_stops(self) -> None:
        """After a signal (or a disk error), ask every live actor once to stop at its next
        batch boundary."""
        if (self.stop_signal is None and self.disk_error is None) or self._stops_sent:
            return
        self._stops_sent = True
        if self.stop_signal is not None:
            announce_stop(self.stop_signal)
        for worker in self.workers:
            actor = self._actors.get(worker.rank)
            if worker.alive and actor is not None:
                actor.stop.remote()

    @contextmanager
    def _signals(self):
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    # -- main loop ----------------------------------------------------------------------------
    def run(self, scheduler: Scheduler, progress: Progress) -> list[WorkerState]:
        """Run until every unit is done or lost; raises Interrupted after a signal."""
        with self._signals():
            self._session.open()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self._on_signal)  # a local Ray installs its own
            try:
                self._check_resources()
                for worker in self.workers:
                    self._start(worker)
                self._loop(scheduler, progress)
            finally:
                try:
                    self._shutdown(scheduler)
                finally:  # a second signal during the shutdown must not leave Ray running
                    self._session.close()
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)
        if self.disk_error is not None:
            raise DiskError(self.disk_error)
        return self.workers

    def _loop(self, scheduler: Scheduler, progress: Progress) -> None:
        while not scheduler.finished:
            self._send_stops()
            stopping = self.stop_signal is not None or self.disk_error is not None
            live = live_workers(self.workers, scheduler, stopping)
            if live is None:
                return
            for worker in live:
                self._assign(worker, scheduler)
            if self._calls:
                ready, _ = self.ray.wait(list(self._calls), num_returns=1, timeout=POLL_SECONDS)
                for ref in ready:
                    self._resolve(ref, scheduler, progress)
            self._heartbeats(scheduler)
            progress.tick()

    def _resolve(self, ref: Any, scheduler: Scheduler, progress: Progress) -> None:
        call = self._calls.pop(ref, None)
        if call is None:  # dropped when its actor was replaced
            return
        try:
            reply = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            if call.worker.alive:
                self._death(call.worker, self._actor_died(call, exc), scheduler)
            return
        self._handle(call, reply, scheduler, progress)

    def _heartbeats(self, scheduler: Scheduler) -> None:
        """Ask busy actors how long ago they finished a batch; kill those that stopped answering."""
        now = time.monotonic()
        beating = {c.worker.rank: c for c in self._calls.values() if c.kind == "beat"}
        for worker in self.workers:
            if worker.status == "starting" and now - worker.last_seen > PLACEMENT_WARNING_SECONDS:
                self._warn_placement(worker)
            if worker.status != "busy" or not self.worker_timeout:
                continue
            beat = beating.get(worker.rank)
            if beat is not None:
                if now - beat.sent > self.worker_timeout:
                    self._hung(worker, scheduler)
                continue
            if now - worker.last_seen >= self._beat_interval():
                worker.last_seen = now
                self._call(worker, "beat", self._actors[worker.rank].idle_seconds.remote())

    def _beat_interval(self) -> float:
        return max(0.5, min(10.0, self.worker_timeout / 4))

    def _warn_placement(self, worker: WorkerState) -> None:
        if worker.rank in self._warned_placement:
            return
        self._warned_placement.add(worker.rank)
        need = self._resources(worker)
        message = (
            f"worker {worker.rank} is still waiting for Ray to place it (needs "
            f"{need['num_cpus']} CPU, {need['num_gpus']} GPU); cluster resources: "
            f"{self._available()}"
        )
        log.warning(message)

    def _available(self) -> str:
        resources = self.ray.cluster_resources()
        return f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"

    def _check_resources(self) -> None:
        """Warn when no live node can ever hold an actor (an autoscaler may still add one)."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        for worker in self.workers:
            need = self._resources(worker)
            if not any(
                n.get("CPU", 0) >= need["num_cpus"] and n.get("GPU", 0) >= need["num_gpus"]
                for n in nodes
            ):
                message = (
                    f"no node of the Ray cluster can hold worker {worker.rank} "
                    f"({need['num_cpus']} CPU, {need['num_gpus']} GPU; cluster has "
                    f"{self._available()}); it waits until such a node joins"
                )
                log.warning(message)

    def _shutdown(self, scheduler: Scheduler) -> None:
        self._calls.clear()
        for worker in self.workers:
            self._kill(worker)
            if worker.alive:
                worker.status = "stopped"
            scheduler.returned(worker.rank)
