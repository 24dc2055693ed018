"""Host work off the device's critical path: batch k+1 is prepared while batch k runs.

A worker's host work per batch (gathering the encoded sequences, packing them, copying the
ids to the device from pinned memory) runs in one background thread, one batch ahead of the
forward passes. Nothing about the results changes: the same batches, in the same order, go
through the same forward; only *when* their inputs are built moves.

It pays where the device runs asynchronously (CUDA: the forward only queues kernels, so the
main thread is free while the GPU computes). On a CPU the forward *is* the host work and
torch's intra-op threads already use every core; a preparing thread only competes with them
(measured: docs/BENCHMARKS.md), so the default is on for CUDA devices only.
``VIRNUCPRO_OVERLAP=1`` / ``0`` forces it on or off (benchmarks).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Generic, TypeVar

import torch

ENV = "VIRNUCPRO_OVERLAP"

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")

_DONE = object()


def overlap_enabled(device: torch.device) -> bool:
    """Prefetch on CUDA devices by default; ``VIRNUCPRO_OVERLAP`` overrides (1/0)."""
    forced = os.environ.get(ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return torch.device(device).type == "cuda"


class Prefetcher(Generic[Item, Prepared]):
    """Yields ``(item, get)`` in order, where ``get()`` returns ``prepare(item)``.

    Enabled, a background thread prepares up to ``depth`` items ahead and ``get`` returns
    the result (or raises what ``prepare`` raised, at the same point as without the thread);
    disabled, ``get`` calls ``prepare`` then and there, exactly as a plain loop would.
    ``close`` (or leaving a ``with`` block) stops the thread; unconsumed items are dropped.
    """

    def __init__(
        self,
        items: Iterable[Item],
        prepare: Callable[[Item], Prepared],
        *,
        enabled: bool,
        depth: int = 1,
    ) -> None:
        self.items = iter(items)
        self.prepare = prepare
        self.enabled = enabled
        self._stop = threading.Event()
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._thread: threading.Thread | None = None
        if enabled:
            self._thread = threading.Thread(
                target=self._produce, name="virnucpro-prefetch", daemon=True
            )
            self._thread.start()

    def _produce(self) -> None:
        try:
            for item in self.items:
                if self._stop.is_set():
                    return
                try:
                    entry = (item, self.prepare(item), None)
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                    entry = (item, None, exc)
                if not self._put(entry) or entry[2] is not None:
                    return
        except BaseException as exc:  # noqa: BLE001 - the item iterator itself failed
            self._put((None, None, exc))
            return
        self._put(_DONE)

    def _put(self, entry: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[tuple[Item, Callable[[], Prepared]]]:
        if not self.enabled:
            for item in self.items:
                yield item, partial(self.prepare, item)
            return
        while True:
            entry = self._queue.get()
            if entry is _DONE:
                return
            item, prepared, error = entry
            if item is None and error is not None:  # the item iterator failed
                raise error
            yield item, partial(_ready, prepared, error)
            if error is not None:
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Prefetcher[Item, Prepared]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ready(prepared: Prepared, error: BaseException | None) -> Prepared:
    if error is not None:
        raise error
    return prepared
