"""Which devices the workers use: ``auto``, ``cpu`` or a list of GPU ordinals."""

from __future__ import annotations

import os

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
