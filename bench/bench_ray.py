"""Overhead of the Ray backend against the local backend, same machine, same data, one run.

Two phases, each run on both backends with the same CPU workers:

- ``realistic``: 2,100 real proteins, a random ESM-2 of esm2_t6_8M geometry (6 layers, 320
  wide, 20 heads), the default unit plan: wall time, startup (compute phase start to the first
  unit), mean time inside a unit, serial time (index + merge).
- ``dispatch``: the same proteins with the 2-layer tiny model cut into many small units, so
  that a unit costs little more than its handling: the per-unit cost of each backend.

From these, a scaling model for N nodes. Ray runs on a private local instance whose files stay
in the temporary directory (removed at the end).

    python bench/bench_ray.py [--workers 2] [--dispatch-unit-tokens 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path

DATA = Path(__file__).resolve().parents[1].parent / "shared/data/HG003687.proteins.faa.gz"
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
SECONDS = re.compile(r"committed: \{'seconds': ([0-9.e-]+)")


def stamp(line: str) -> float:
    return datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def measure(out: Path, wall: float, workers: int) -> dict:
    """Figures of one finished run, from run.json, run.log and the worker logs."""
    report = json.loads((out / "run.json").read_text())
    run_log = (out / "logs" / "run.log").read_text().splitlines()
    planned = next(stamp(line) for line in run_log if " units (" in line)
    lines = [
        line
        for rank in range(workers)
        for line in (out / "logs" / f"worker_{rank}.log").read_text().splitlines()
    ]
    first_unit = min(stamp(x) for x in lines if " INFO unit " in x and "committed" not in x)
    unit_seconds = [float(m.group(1)) for x in lines if (m := SECONDS.search(x))]
    timings = report["timings_s"]
    compute = timings["compute"]
    startup = first_unit - planned
    units = len(unit_seconds)
    return {
        "wall_s": wall,
        "serial_s": timings["index"] + timings.get("merge", 0.0),
        "compute_s": compute,
        "startup_s": startup,
        "units": units,
        "unit_s_mean": sum(unit_seconds) / units,
        "unit_s_max": max(unit_seconds),
        # Worker-seconds after startup per unit, inside or outside the unit's computation.
        "per_unit_s": (compute - startup) * workers / units,
        "embedded": report["counts"]["embedded"],
    }


def run(backend: str, out: Path, spec, workers: int, unit_tokens: int | None) -> dict:
    from virnucpro.api import embed

    started = time.perf_counter()
    result = embed(
        DATA,
        out,
        spec,
        devices="cpu",
        world_size=workers,
        backend=backend,
        unit_tokens=unit_tokens,
        worker_timeout=None,
        quiet=True,
    )
    wall = time.perf_counter() - started
    assert result.exit_code == 0, result
    return measure(out, wall, workers)


def scaling(real: dict, handling: float, workers_per_node: int) -> None:
    """T(A actors) = serial + startup + max(U (t + h) / A + t / 2, t_max + h).

    U units of mean compute t (longest t_max) and handling cost h are pulled dynamically; the
    last wave leaves on average half a unit of imbalance, and no run is shorter than its
    longest unit. Beyond U actors, more nodes only help with smaller units (--unit-tokens).
    """
    u, t, t_max = real["units"], real["unit_s_mean"], real["unit_s_max"]
    fixed = real["serial_s"] + real["startup_s"]
    print(
        f"scaling model, g = {workers_per_node} workers per node: fixed {fixed:.1f} s, "
        f"{u} units of {t:.1f} s (max {t_max:.1f} s), handling {handling * 1000:.1f} ms/unit"
    )
    for nodes in (1, 2, 4, 8, 16):
        actors = nodes * workers_per_node
        total = fixed + max(u * (t + handling) / actors + t / 2, t_max + handling)
        print(f"  N={nodes:2d}: {actors:3d} actors, predicted {total:7.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dispatch-unit-tokens", type=int, default=1000)
    args = parser.parse_args()

    from virnucpro.api import resolve_model
    from virnucpro.models.tiny import write_tiny_esm2_hf

    tmp = Path(tempfile.mkdtemp(prefix="vrb"))  # short: Ray's socket paths <= 107 bytes
    os.environ["VIRNUCPRO_RAY_TMPDIR"] = str(tmp / "ray")
    results: dict[str, dict] = {}
    try:
        t6 = write_tiny_esm2_hf(tmp / "t6", num_layers=6, hidden=320, heads=20)
        tiny = write_tiny_esm2_hf(tmp / "tiny")
        phases = (("realistic", t6, None), ("dispatch", tiny, args.dispatch_unit_tokens))
        for phase, model, unit_tokens in phases:
            spec = resolve_model(str(model))
            for backend in ("local", "ray"):
                name = f"{phase}/{backend}"
                out = tmp / name.replace("/", "_")
                results[name] = run(backend, out, spec, args.workers, unit_tokens)
                figures = {k: round(v, 4) for k, v in results[name].items()}
                print(name, json.dumps(figures), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    for phase in ("realistic", "dispatch"):
        local, ray = results[f"{phase}/local"], results[f"{phase}/ray"]
        print(
            f"{phase}: {local['units']} units; wall local {local['wall_s']:.1f} s, ray "
            f"{ray['wall_s']:.1f} s (ratio {ray['wall_s'] / local['wall_s']:.3f}); startup "
            f"local {local['startup_s']:.1f} s, ray {ray['startup_s']:.1f} s; worker-seconds "
            f"per unit local {local['per_unit_s'] * 1000:.1f} ms, ray "
            f"{ray['per_unit_s'] * 1000:.1f} ms"
        )
    handling = {}
    for backend in ("local", "ray"):
        d = results[f"dispatch/{backend}"]
        handling[backend] = d["per_unit_s"] - d["unit_s_mean"]  # outside the unit's computation
        print(
            f"{backend}: handling cost per unit (dispatch, commit, reply) "
            f"{handling[backend] * 1000:.1f} ms of worker time"
        )
    print(f"Ray's extra cost per unit: {(handling['ray'] - handling['local']) * 1000:.1f} ms")
    scaling(results["realistic/ray"], handling["ray"], args.workers)


if __name__ == "__main__":
    main()
