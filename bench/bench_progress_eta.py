"""How good is the early ETA? Tokens left (what the progress lines print) against sequences left.

Runs one real ``virnucpro embed`` (CPU, a small random ESM-2 in the real format) on a real
protein length mix, reads its progress lines from the pipe (as a batch log would hold them),
and compares, at each line, two ETAs with the time the run really still took:

- by tokens: planned tokens still to compute over the token rate since the first line;
- by sequences: sequences still to embed over the sequence rate since the first line (what a
  sequence-count bar shows; units are planned longest first).

    python3 bench/bench_progress_eta.py [FASTA] [--workers 1]

Prints a table (ETA / true remaining time, at 10%, 25% and 50% of the run's time).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO.parent / "shared" / "data" / "MIIJ01000039.single.faa.gz"
LINE = re.compile(
    r"\| ([\d,]+)/([\d,]+) sequences \| ([\d,]+)/([\d,]+) tokens \|.*elapsed (\d+):(\d\d):(\d\d)"
)


def _int(text: str) -> int:
    return int(text.replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fasta", nargs="?", type=Path, default=DEFAULT)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    from virnucpro.models.tiny import write_tiny_esm2_hf

    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_esm2_hf(Path(tmp) / "esm", num_layers=2, hidden=32, heads=4, seed=0)
        command = [
            sys.executable, "-m", "virnucpro", "embed", str(args.fasta), "-o", f"{tmp}/out",
            "--model", str(model), "--devices", "cpu", "--workers", str(args.workers),
            "--tokens-per-batch", "2048",
        ]  # fmt: skip
        env = {**os.environ, "VIRNUCPRO_PROGRESS_SECONDS": "1"}
        started = time.monotonic()
        process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
        lines = []
        for raw in process.stderr:
            match = LINE.search(raw)
            if match:
                s, big_s, k, big_k = match.groups()[:4]
                lines.append(
                    (time.monotonic(), _int(s), _int(big_s), _int(k), _int(big_k), raw.strip())
                )
        process.wait()
        end = time.monotonic()
    if process.returncode != 0 or len(lines) < 4:
        raise SystemExit(f"the run failed or printed too few lines (exit {process.returncode})")
    moving = [x for x in lines if x[1] > 0]
    t0, s0, _, k0, _, _ = moving[0]
    print(f"command: {' '.join(command[1:])}")
    print(f"{len(lines)} progress lines; run {end - started:.1f} s, compute {end - t0:.1f} s")
    print("| share of compute time | done (tokens) | done (sequences) | ETA tokens / true | "
          "ETA sequences / true |")  # fmt: skip
    print("|---|---|---|---|---|")
    for share in (0.1, 0.25, 0.5):
        target = t0 + share * (end - t0)
        t, s, big_s, k, big_k, _ = min(moving[1:], key=lambda x: abs(x[0] - target))
        true = end - t
        eta_tokens = (t - t0) * (big_k - k) / max(k - k0, 1)
        eta_seqs = (t - t0) * (big_s - s) / max(s - s0, 1)
        print(
            f"| {share:.0%} | {k / big_k:.0%} | {s / big_s:.0%} | "
            f"{eta_tokens / true:.2f} | {eta_seqs / true:.2f} |"
        )


if __name__ == "__main__":
    main()
