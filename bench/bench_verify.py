"""What verifying the engine's stores costs on resume (issue 11 items 3-5).

On a synthetic FASTA of SIZE_MB megabytes: the index build (one pass: parse, store, hash the
input alongside), a reuse of the cache (every store file hashed again), a reuse after `touch`
(the input hashed too), and the verification of unit files (read whole, checksum recomputed)
against reading them with h5py alone. Repetitions are interleaved; the medians and their
ratios are printed as a Markdown table.

    python3 bench/bench_verify.py [SIZE_MB] [REPEATS]
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from virnucpro.engine.unitfile import UnitResult, verify_unit, write_unit
from virnucpro.io.index import build_or_load


def _fasta(path: Path, megabytes: int) -> None:
    rng = random.Random(0)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    block = "".join(rng.choice(letters) for _ in range(1 << 16))
    with open(path, "w") as fh:
        written, n = 0, 0
        while written < megabytes * 1_000_000:
            length = rng.randint(50, 1000)
            start = rng.randrange(len(block) - length)
            fh.write(f">p{n}\n{block[start : start + length]}\n")
            written += length + 10
            n += 1


def _units(folder: Path, count: int, rows: int, dim: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for u in range(count):
        positions = np.arange(u * rows, (u + 1) * rows, dtype=np.int64)
        result = UnitResult(
            key=f"u{u:06d}",
            positions=positions,
            ids=[f"p{p}" for p in positions.tolist()],
            lengths=np.full(rows, 300, np.int64),
            truncated=np.zeros(rows, bool),
            vectors={"embeddings": rng.standard_normal((rows, dim), dtype=np.float32)},
        )
        paths.append(write_unit(folder, result, job="bench"))
    return paths


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fasta = root / "in.fa"
        _fasta(fasta, size_mb)
        units_dir = root / "units"
        units_dir.mkdir()
        paths = _units(units_dir, 16, 2048, 2560)  # 16 units of 2,048 x 2,560 float32
        times: dict[str, list[float]] = {k: [] for k in ("build", "reuse", "touch", "h5", "ver")}
        for r in range(repeats):
            cache = root / f"cache{r}"
            times["build"].append(_timed(lambda c=cache: build_or_load([fasta], c).close()))
            times["reuse"].append(_timed(lambda c=cache: build_or_load([fasta], c).close()))
            st = fasta.stat()
            os.utime(fasta, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
            times["touch"].append(_timed(lambda c=cache: build_or_load([fasta], c).close()))

            def read_plain() -> None:
                for p in paths:
                    with h5py.File(p, "r") as f:
                        f["vectors/embeddings"][()]

            times["h5"].append(_timed(read_plain))
            times["ver"].append(_timed(lambda: [verify_unit(p) for p in paths]))
        med = {k: statistics.median(v) for k, v in times.items()}
        unit_mb = sum(p.stat().st_size for p in paths) / 1e6
        print(f"input {fasta.stat().st_size / 1e6:.0f} MB, {repeats} interleaved repetitions")
        print("| step | median s | ratio |")
        print("|---|---|---|")
        print(f"| index build | {med['build']:.2f} | 1 |")
        print(
            f"| index reuse (store verified) | {med['reuse']:.2f} | "
            f"{med['reuse'] / med['build']:.2f} of build |"
        )
        print(
            f"| index reuse after touch (input hashed) | {med['touch']:.2f} | "
            f"{med['touch'] / med['build']:.2f} of build |"
        )
        print(f"| read {unit_mb:.0f} MB of unit files (h5py) | {med['h5']:.2f} | 1 |")
        print(
            f"| verify them (checksum of every dataset) | {med['ver']:.2f} | "
            f"{med['ver'] / med['h5']:.2f} of read |"
        )


if __name__ == "__main__":
    main()
