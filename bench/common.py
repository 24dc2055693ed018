"""Shared helpers of the benchmark scripts: data paths, the machine, timing and tables.

The scripts run as ``python bench/bench_X.py`` from the repository root, so this module is
imported as ``common`` (``bench/`` is the script's directory, first on ``sys.path``).
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = SHARED / "data"
PROTEINS = DATA / "HG003687.proteins.faa.gz"
GENOME = DATA / "GCF_001457455.1_NCTC11397_genomic.fna.gz"


def cpu_model() -> str:
    """The ``lscpu`` model name (or the platform's processor string)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict:
    """What the figures were measured on: CPU, usable cores, date, versions."""
    import torch

    import virnucpro

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": cores,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "virnucpro": virnucpro.__version__,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def print_machine() -> dict:
    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    return info


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall-clock seconds of one call and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best(values: Iterable[float]) -> float:
    """The smallest of repeated timings (least disturbed by other jobs)."""
    return min(values)


def read_fasta_pairs(path: Path) -> list[tuple[str, str]]:
    """(header line without '>', sequence) of every record, keeping the whole header."""
    from virnucpro.io.fasta import read_records

    return [(r.header, r.seq) for r in read_records(path)]


def write_fasta(path: Path, records: Sequence[tuple[str, str]]) -> Path:
    """Write (header, sequence) pairs, one sequence line each (gzip when the name ends .gz)."""
    text = "".join(f">{h}\n{s}\n" for h, s in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


def stride_sample(records: Sequence, count: int | None) -> list:
    """Every k-th record so that ``count`` remain (keeps the file's length mix); all if None."""
    if count is None or count >= len(records):
        return list(records)
    step = len(records) / count
    return [records[int(i * step)] for i in range(count)]


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table (floats as given: format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"
