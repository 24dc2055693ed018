"""Benchmark the CPU worker layout: one worker with every thread vs single-threaded workers.

``--proteins`` real proteins of HG003687 (every k-th, keeping the length mix) are embedded by
``virnucpro.api.embed`` with a RANDOM ESM-2 in the esm2_t6_8M geometry (6 layers, 320, 20
heads; real HF format), once per layout, on the machine as found and on a loaded machine
(``--burners`` extra processes spinning on the CPU while the run lasts, as another user's
job would). Layouts and conditions are interleaved ``--repeats`` times; the fastest run
counts.

    python bench/bench_cpu_workers.py [--proteins 300] [--burners 1] [--repeats 2]
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

import common


def _burn(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--proteins", type=int, default=300)
    parser.add_argument("--burners", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    common.print_command("bench_cpu_workers.py", args)
    common.print_machine()
    from virnucpro.api import embed, resolve_model
    from virnucpro.models.tiny import write_tiny_esm2_hf

    cores = len(os.sched_getaffinity(0))
    layouts = sorted({1, cores})  # 1 worker x cores threads; cores workers x 1 thread
    records = common.stride_sample(common.read_fasta_pairs(common.PROTEINS), args.proteins)
    runs = itertools.count()
    best: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        fasta = common.write_fasta(tmp / "p.faa", records)
        model = write_tiny_esm2_hf(tmp / "t6", num_layers=6, hidden=320, heads=20, seed=0,
                                   use_transformers=False)  # fmt: skip
        spec = resolve_model(str(model), precision="fp32")
        for _ in range(args.repeats):
            for condition in ("as found", "loaded"):
                for workers in layouts:
                    stop = mp.Event()
                    burners = [mp.Process(target=_burn, args=(stop,)) for _ in
                               range(args.burners if condition == "loaded" else 0)]  # fmt: skip
                    for b in burners:
                        b.start()
                    start = time.perf_counter()
                    embed([fasta], tmp / f"o{next(runs)}", spec, devices="cpu",
                          world_size=workers, quiet=True)  # fmt: skip
                    seconds = time.perf_counter() - start
                    stop.set()
                    for b in burners:
                        b.join()
                    print(f"{condition}, {workers} worker(s): {seconds:.1f} s "
                          f"(load {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
                    key = (condition, workers)
                    best[key] = min(best.get(key, float("inf")), seconds)
    print()
    rows = []
    for condition in ("as found", "loaded"):
        one = best[(condition, 1)]
        for workers in layouts:
            s = best[(condition, workers)]
            rows.append((condition, f"{workers} x {cores // workers} thread(s)", f"{s:.1f}",
                         f"{one / s:.2f}x"))  # fmt: skip
    print(common.markdown_table(["machine", "workers x threads", "s", "vs 1 worker"], rows))


if __name__ == "__main__":
    main()
