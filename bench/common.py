"""Shared helpers of the benchmark scripts: data paths, the machine, timing and tables.

The scripts run as ``python bench/bench_X.py`` from the repository root, so this module is
imported as ``common`` (``bench/`` is the script's directory, first on ``sys.path``).
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import platform
import re
import resource
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
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


def source_revision() -> str:
    """The repository's commit (``+dirty`` when the working tree differs), or ``unknown``."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


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
        "commit": source_revision(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def print_machine() -> dict:
    info = machine()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    return info


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_fraction(seconds: float = 1.0) -> float:
    """Fraction of the machine's CPU time in use over ``seconds`` (0 when unknown)."""
    try:
        busy0, total0 = _cpu_ticks()
        time.sleep(seconds)
        busy1, total1 = _cpu_ticks()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (busy1 - busy0) / max(total1 - total0, 1)


class Quiet:
    """Waits (bounded) for other jobs to leave the CPUs before each measurement; counts misses.

    The machine is shared: a measurement that starts while another process holds the cores
    is slowed for reasons that have nothing to do with the code measured.
    """

    def __init__(self, threshold: float = 0.15, max_wait: float = 60.0) -> None:
        self.threshold = threshold
        self.max_wait = max_wait
        self.started_busy = 0
        self.measurements = 0
        self.disturbed = 0  # runs repeated because other jobs took the CPUs meanwhile

    def wait(self) -> None:
        deadline = time.monotonic() + self.max_wait
        self.measurements += 1
        while busy_fraction() > self.threshold:
            if time.monotonic() > deadline:
                self.started_busy += 1
                return

    def summary(self) -> str:
        return (
            f"{self.measurements - self.started_busy} of {self.measurements} runs started on a "
            f"quiet machine (< {self.threshold:.0%} CPU busy over 1 s; waited up to "
            f"{self.max_wait:g} s); {self.disturbed} run(s) repeated because other jobs took "
            "over 10% of the CPUs during them"
        )


def _own_cpu() -> float:
    """CPU seconds of this process and its reaped children (the engine's workers)."""
    me, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Measured:
    """One timed call: wall seconds, its result, and the CPU share other jobs took meanwhile."""

    seconds: float
    result: object
    foreign: float  # CPU time of OTHER processes / (wall x cores); 0 = undisturbed


def timed(fn: Callable[[], object]) -> Measured:
    """Time one call; also measure how much of the machine other processes used meanwhile."""
    ticks = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count() or 1
    busy0, _ = _cpu_ticks()
    own0 = _own_cpu()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    busy1, _ = _cpu_ticks()
    foreign = (busy1 - busy0) / ticks - (_own_cpu() - own0)
    return Measured(seconds, result, max(0.0, foreign) / (seconds * cores))


def measure(
    fn: Callable[[], object], quiet: Quiet, *, max_foreign: float = 0.10, attempts: int = 3
) -> Measured:
    """Time ``fn`` on a quiet machine: wait for quiet, run, and run again (up to ``attempts``
    times) while other jobs took more than ``max_foreign`` of the CPUs; the fastest run counts.
    """
    runs = []
    for _ in range(attempts):
        quiet.wait()
        runs.append(timed(fn))
        if runs[-1].foreign <= max_foreign:
            break
        quiet.disturbed += 1
    return min(runs, key=lambda m: m.seconds)


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


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?:INFO|WARNING|ERROR) (.*)$")


def log_events(path: Path, since: float = 0.0) -> list[tuple[float, str]]:
    """(epoch seconds, message) of every line of a run or worker log written after ``since``."""
    events = []
    for line in Path(path).read_text().splitlines():
        match = _STAMP.match(line)
        if match:
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp >= since - 0.001:
                events.append((stamp, match.group(2)))
    return events


def first(events: list[tuple[float, str]], pattern: str) -> float | None:
    """Time of the first event whose message matches ``pattern`` (a regular expression)."""
    regex = re.compile(pattern)
    return next((t for t, message in events if regex.search(message)), None)


def engine_phases(run_dir: Path, since: float = 0.0) -> dict[str, float]:
    """Start-up phases of one engine run from its logs, rank 0 (seconds; absent if not seen).

    ``spawn_import_s``: the parent starts the worker -> the worker runs (interpreter, imports);
    ``load_model_s``: -> model loaded; ``units_s``: first unit started -> last unit committed;
    ``first_unit_at``: epoch seconds when the first unit started (any rank).
    """
    logs = Path(run_dir) / "logs"
    run = log_events(logs / "run.log", since)
    workers = [log_events(p, since) for p in sorted(logs.glob("worker_*.log"))]
    phases: dict[str, float] = {}
    spawned = first(run, r"^virnucpro\.engine worker 0 started on ")
    rank0 = workers[0] if workers else []
    running = first(rank0, r"^worker 0 started \(pid")
    loaded = first(rank0, r"^model loaded: ")
    starts = [t for w in workers for t, m in w if _UNIT_START.search(m)]
    ends = [t for w in workers for t, m in w if _UNIT_END.search(m)]
    if spawned is not None and running is not None:
        phases["spawn_import_s"] = running - spawned
    if running is not None and loaded is not None:
        phases["load_model_s"] = loaded - running
    if starts and ends:
        phases["units_s"] = max(ends) - min(starts)
        phases["first_unit_at"] = min(starts)
    phases["in_units_worker_s"] = sum(
        ast.literal_eval(m.split(" committed: ", 1)[1])["seconds"]
        for w in workers
        for _, m in w
        if _UNIT_END.search(m)
    )
    return phases


_UNIT_START = re.compile(r"^unit \S+: \d+ sequences$")
_UNIT_END = re.compile(r"^unit \S+ committed: ")


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table (floats as given: format them before)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def add_measurement_options(parser) -> None:
    """``--repeats`` and ``--max-wait``, shared by the CPU benchmarks."""
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--max-wait",
        type=float,
        default=60.0,
        help="seconds to wait for a quiet machine before each measurement",
    )


def print_command(script: str, args) -> None:
    """Print the command line with every option spelled out (defaults too), so that a table
    can be reproduced exactly; call it right after ``parse_args``."""
    parts = [f"python bench/{script}"]
    for name, value in vars(args).items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is not False and value is not None:
            parts.append(f"{flag} {value}")
    print("command: " + " ".join(parts), flush=True)
