"""The merge and validation alone at 10k to 3M sequences: parent peak RSS and peak disk.

Computing millions of embeddings on a shared 2-core machine takes hours, but the parent's
memory and disk are decided by the merge, so this benchmark gives the merge exactly what
workers would have left: an index of N tiny proteins and unit files in the real format
(``--per-unit`` sequences each, random float32 vectors of width ``--dim``, in the length
order the planner uses). In a fresh process that has imported what an ``embed`` parent
imports (torch included), ``merge_units`` consumes them as a complete run does; the table
gives that process's peak RSS (``VmHWM``: ``ru_maxrss`` would include the RSS of the
benchmark process that started it) and the merge's peak disk against the final output.

    python bench/bench_merge_scale.py [--sizes 10000,100000,1000000,3000000] [--dim 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import markdown_table, print_command, print_machine

_CHILD = """
import json, sys, time
from pathlib import Path

def hwm_kib():  # this process image's own peak (ru_maxrss can carry the forking parent's)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
import torch  # what an embed parent has loaded
import virnucpro.engine.job  # noqa
from virnucpro.engine.merge import disk_bytes, merge_units
from virnucpro.io.index import build_or_load
root, dim = Path(sys.argv[1]), int(sys.argv[2])
index = build_or_load([root / "in.fa"], root / "work" / "index")
units = sorted((root / "work" / "units").glob("*.h5"))
before = hwm_kib()
t = time.perf_counter()
r = merge_units(index, units, root / "embeddings.h5", outputs=["embeddings"], dim=dim,
                per_token=False, attrs={}, consume=root / "work" / "merge", disk_root=root)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "rss_before_kib": before,
                  "rss_kib": hwm_kib(),
                  "peak_disk": r.peak_disk, "output": disk_bytes(root / "embeddings.h5"),
                  "index": disk_bytes(root / "work" / "index"), "count": r.count}))
"""


def prepare(root: Path, n: int, per_unit: int, dim: int) -> float:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_scale import _tiny_proteins, _write_units

    from virnucpro.io.index import build_or_load

    start = time.perf_counter()
    root.mkdir(parents=True)
    index = build_or_load([_tiny_proteins(root / "in.fa", n)], root / "work" / "index")
    _write_units(index, root / "work" / "units", per_unit, dim)
    index.close()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000,1000000,3000000")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--per-unit", type=int, default=2500)
    args = parser.parse_args()
    print_command("bench_merge_scale.py", args)
    print_machine()
    rows = []
    with tempfile.TemporaryDirectory() as name:
        for n in [int(v) for v in args.sizes.split(",")]:
            root = Path(name) / f"n{n}"
            made = prepare(root, n, args.per_unit, args.dim)
            units = sum(p.stat().st_blocks * 512 for p in
                                     (root / "work" / "units").glob("*.h5"))  # fmt: skip
            done = subprocess.run([sys.executable, "-c", _CHILD, str(root), str(args.dim)],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{n}: prepared in {made:.0f} s, units {units} B; {r}", flush=True)
            rows.append((n, r, units))
            subprocess.run(["rm", "-rf", str(root)], check=True)
    base = rows[0][1]["rss_kib"] if rows else 0
    print()
    print(markdown_table(
        ["sequences", "parent peak RSS MiB", "vs first MiB", "RSS before merge MiB",
         "merge s", "index MiB", "unit files MiB", "peak disk MiB", "embeddings.h5 MiB",
         "peak / output", "peak / (output + index)"],
        [(f"{n:,}", f"{r['rss_kib'] / 1024:.0f}", f"{(r['rss_kib'] - base) / 1024:+.0f}",
          f"{r['rss_before_kib'] / 1024:.0f}", f"{r['seconds']:.0f}",
          f"{r['index'] / 2**20:.1f}", f"{u / 2**20:.1f}", f"{r['peak_disk'] / 2**20:.1f}",
          f"{r['output'] / 2**20:.1f}", f"{r['peak_disk'] / r['output']:.2f}",
          f"{r['peak_disk'] / (r['output'] + r['index']):.2f}")
         for n, r, u in rows]))  # fmt: skip


if __name__ == "__main__":
    main()
