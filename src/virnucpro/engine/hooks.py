"""Fault-injection hooks for tests, read from the environment by every worker.

They are a testing aid (documented in docs/TESTING.md) and do nothing unless set:

VIRNUCPRO_TEST_CRASH_ID=ID   the worker about to embed sequence ID kills itself with SIGKILL
VIRNUCPRO_TEST_HANG_ID=ID    the worker about to embed sequence ID sleeps forever
VIRNUCPRO_TEST_OOM_ID=ID     any batch holding sequence ID raises torch.OutOfMemoryError
VIRNUCPRO_TEST_DELAY=SPEC    sleep before each batch: "0.5" for every rank, or "1=0.5,2=0.1"
VIRNUCPRO_TEST_LOAD_DELAY=S  sleep S seconds while loading the model (announced in the worker
                             log, so a test can stop the worker there, e.g. with SIGSTOP)
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence

import torch

OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _ids(name: str) -> set[str]:
    value = os.environ.get(name, "")
    return {v for v in value.split(",") if v}


def _delay(rank: int) -> float:
    spec = os.environ.get("VIRNUCPRO_TEST_DELAY", "")
    if not spec:
        return 0.0
    if "=" not in spec:
        return float(spec)
    for item in spec.split(","):
        r, _, seconds = item.partition("=")
        if r.strip() == str(rank):
            return float(seconds)
    return 0.0


def during_load(rank: int, log: logging.Logger) -> None:
    """Called by a worker just before it loads the model."""
    seconds = float(os.environ.get("VIRNUCPRO_TEST_LOAD_DELAY", "0") or 0)
    if seconds > 0:
        log.warning("VIRNUCPRO_TEST_LOAD_DELAY: loading the model (pid %d)", os.getpid())
        time.sleep(seconds)


class TestHooks:
    """The hooks in force for one worker (read once at start)."""

    def __init__(self, rank: int, log: logging.Logger | None = None) -> None:
        self.log = log  # the worker log: a hang is announced there, so tests can wait for it
        self.crash = _ids("VIRNUCPRO_TEST_CRASH_ID")
        self.hang = _ids("VIRNUCPRO_TEST_HANG_ID")
        self.oom = _ids("VIRNUCPRO_TEST_OOM_ID")
        self.delay = _delay(rank)

    def before_batch(self, ids: Sequence[str]) -> None:
        """Called with the ids of a batch just before its forward pass."""
        if self.delay:
            time.sleep(self.delay)
        if self.crash and not self.crash.isdisjoint(ids):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.hang and not self.hang.isdisjoint(ids):
            if self.log is not None:
                self.log.warning(
                    "VIRNUCPRO_TEST_HANG_ID: hanging on %s",
                    ",".join(sorted(self.hang.intersection(ids))),
                )
            while True:
                time.sleep(3600)
        if self.oom and not self.oom.isdisjoint(ids):
            raise OutOfMemoryError("VIRNUCPRO_TEST_OOM_ID: simulated out of memory")
