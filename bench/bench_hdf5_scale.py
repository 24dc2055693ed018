"""Does one embeddings.h5 scale? Write and read cost of the merge's layout against its size.

For each row count, a file laid out as the merge lays it out (``ids`` UTF-8 strings,
``lengths``, contiguous early-allocated float32 ``embeddings`` of width ``--dim``) is built
through the same memory-mapped writes, fsynced, then read back: opening the file, reading
sequential blocks (the validation pass), and random single rows by index (a lookup). Seconds
per GB that stay flat as the file grows mean a larger file costs only its size.

    python bench/bench_hdf5_scale.py [--rows 50000,200000,800000] [--dim 1280]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from common import markdown_table, print_command, print_machine

from virnucpro.engine.merge import _contiguous


def build(path: Path, n: int, dim: int) -> dict:
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with h5py.File(path, "w") as f:
        ids = f.create_dataset("ids", shape=(n,), dtype=h5py.string_dtype("utf-8"))
        for s in range(0, n, 65536):
            ids[s : s + 65536] = [f"UniRef50_{i:09d}" for i in range(s, min(n, s + 65536))]
        f.create_dataset("lengths", data=np.full(n, 300, np.int64))
        offset = _contiguous(f, "embeddings", (n, dim), np.float32).id.get_offset()
    block = rng.standard_normal((max(1, (64 << 20) // (dim * 4)), dim), dtype=np.float32)
    for s in range(0, n, block.shape[0]):
        rows = min(block.shape[0], n - s)
        view = np.memmap(path, "<f4", "r+", offset=offset + s * dim * 4, shape=(rows, dim))
        view[:] = block[:rows]
        view.flush()
        del view
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())
    return {"write_s": time.perf_counter() - start}


def read(path: Path, n: int, dim: int, lookups: int = 2000) -> dict:
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # drop it from the page cache
    os.close(fd)
    start = time.perf_counter()
    f = h5py.File(path, "r")
    ds = f["embeddings"]
    opened = time.perf_counter() - start
    start = time.perf_counter()
    step = max(1, (32 << 20) // (dim * 4))
    total = 0.0
    for s in range(0, n, step):
        total += float(ds[s : s + step][0, 0])  # the whole block is read
    sequential = time.perf_counter() - start
    rng = np.random.default_rng(1)
    rows = rng.integers(0, n, lookups)
    start = time.perf_counter()
    for r in rows.tolist():
        ds[r]
    random_s = (time.perf_counter() - start) / lookups
    f.close()
    return {"open_s": opened, "sequential_s": sequential, "random_row_ms": random_s * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="50000,200000,800000")
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--folder", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    print_command("bench_hdf5_scale.py", args)
    print_machine()
    out = []
    with tempfile.TemporaryDirectory(dir=args.folder) as name:
        for n in [int(v) for v in args.rows.split(",")]:
            path = Path(name) / f"e{n}.h5"
            figures = build(path, n, args.dim) | read(path, n, args.dim)
            gb = path.stat().st_size / 1e9
            print(n, round(gb, 2), figures, flush=True)
            out.append((f"{n:,}", f"{gb:.2f}", f"{figures['write_s'] / gb:.1f}",
                        f"{figures['sequential_s'] / gb:.1f}", f"{figures['open_s'] * 1e3:.1f}",
                        f"{figures['random_row_ms']:.2f}"))  # fmt: skip
            path.unlink()
    print()
    print(markdown_table(["rows", "GB", "write + fsync s/GB", "sequential read s/GB",
                          "open ms", "random row read ms"], out))  # fmt: skip


if __name__ == "__main__":
    main()
