"""Which devices the workers use: ``auto``, ``cpu`` or a list of GPU ordinals."""

from __future__ import annotations

import os
from pathlib import Path

from virnucpro.errors import VirnucproError


def resolve_devices(devices: str = "auto", workers: int | None = None) -> list[str]:
    """One torch device string per worker.

    ``auto``: every visible GPU, else CPU. ``cpu``: ``workers`` CPU workers (default 1).
    ``0,1,3``: worker i uses the i-th listed ordinal, as the parent process sees devices
    (CUDA_VISIBLE_DEVICES is inherited, never rewritten).
    """
    spec = (devices or "auto").strip().lower()
    if spec == "auto":
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            count = torch.cuda.device_count()
            ordinals = list(range(count if workers is None else min(workers, count)))
            return [f"cuda:{i}" for i in ordinals]
        spec = "cpu"
    if spec == "cpu":
        n = 1 if workers is None else workers
        if n < 1:
            raise VirnucproError(f"--workers must be at least 1, not {n}")
        return ["cpu"] * n
    try:
        ordinals = [int(part) for part in spec.replace(" ", "").split(",") if part != ""]
    except ValueError:
        raise VirnucproError(
            f"--devices must be auto, cpu or GPU numbers such as 0,1,3; got {devices!r}"
        ) from None
    if not ordinals:
        raise VirnucproError(f"--devices lists no device: {devices!r}")
    if len(set(ordinals)) != len(ordinals):
        raise VirnucproError(f"--devices lists a GPU twice: {devices!r}")
    import torch

    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    absent = [i for i in ordinals if i >= available]
    if absent:
        raise VirnucproError(
            f"--devices {devices}: GPU {absent[0]} is not visible ({available} visible GPU(s))"
        )
    return [f"cuda:{i}" for i in ordinals]


def threads_per_worker(devices: list[str]) -> int:
    """CPU threads for each worker: the machine's cores split between the workers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, len(devices)))


MEMORY_PER_WEIGHT_BYTE = 3  # a CPU worker holds the weights, fp32 activations and buffers


def _weights_bytes(weights: str) -> int:
    path = Path(weights)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def default_cpu_workers(weights: str, cores: int | None = None, memory: int | None = None) -> int:
    """CPU workers when ``--workers`` is not given: one single-threaded worker per core (on
    a shared or loaded machine several single-threaded workers beat one worker with every
    thread, docs/BENCHMARKS.md section 7), as many as the available memory holds at
    ``MEMORY_PER_WEIGHT_BYTE`` times the weights each; at least one."""
    if cores is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    memory = _available_memory() if memory is None else memory
    need = MEMORY_PER_WEIGHT_BYTE * max(1, _weights_bytes(weights))
    by_memory = memory // need if memory else 1
    return int(max(1, min(cores or 1, by_memory)))
