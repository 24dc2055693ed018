"""GPU benchmark: ESM-2 3B geometry (random weights) in bf16/fp16 on one GPU, in ONE run.

Reports, for real protein lengths (../shared/data/HG003687.proteins.faa.gz), batched exactly as
the engine batches them: real tokens/s, padding fraction, model FLOPs utilisation (MFU)
against (a) the chip's dense half-precision peak from the datasheet and (b) a bf16 matmul
measured in the same run; and the engine end to end (`virnucpro embed` on cuda:0 with a
random esm2_t33_650M-geometry folder) against the bare forward of that model on the same
batches. Usage (repo root, on a GPU machine):

    python bench/bench_gpu.py [--peak-tflops 989] [--tokens-per-batch 16384,32768]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "HG003687.proteins.faa.gz"


def random_state(cfg, device) -> dict:
    from virnucpro.models.esm2 import param_shapes

    g = torch.Generator(device=device).manual_seed(0)
    state = {}
    for name, shape in param_shapes(cfg).items():
        noise = torch.randn(shape, generator=g, device=device)
        if "layer_norm" in name:
            state[name] = 1 + 0.1 * noise if name.endswith("weight") else 0.1 * noise
        elif name.endswith("bias"):
            state[name] = 0.02 * noise
        elif name == "embed_tokens.weight":
            state[name] = noise
        else:
            state[name] = noise / math.sqrt(shape[1])
    return state


def engine_batches(tokens_per_batch: int) -> list[list[np.ndarray]]:
    from virnucpro.engine.batching import token_budget_batches
    from virnucpro.io.fasta import read_records
    from virnucpro.models.esm2 import encode_protein

    encoded = [encode_protein(r.seq) for r in read_records(DATA)]
    encoded.sort(key=len, reverse=True)
    return [
        [encoded[i] for i in b]
        for b in token_budget_batches([len(e) for e in encoded], tokens_per_batch)
    ]


def flops(cfg, batch: list[np.ndarray]) -> float:
    """Forward FLOPs of a padded batch: 24 d^2 per token per layer + attention 4 T d."""
    width = max(len(e) for e in batch)
    slots = width * len(batch)
    d = cfg.embed_dim
    return cfg.num_layers * slots * (24 * d * d + 4 * width * d)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_forward(embedder, batches, repeats: int = 2) -> float:
    for b in batches[:3]:
        embedder.forward(b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for b in batches:
            embedder.forward(b)
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def measured_peak() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - start)


def main() -> None:
    from virnucpro.models.base import EmbedderSpec
    from virnucpro.models.esm2 import Esm2Config, Esm2Embedder, build_esm2_model

    p = argparse.ArgumentParser()
    p.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 peak")
    p.add_argument("--tokens-per-batch", default="16384,32768")
    p.add_argument("--skip-engine", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny geometry on CPU: checks the script")
    args = p.parse_args()
    if args.smoke:
        device = torch.device("cpu")
        results = {
            "gpu": "none (smoke)",
            "torch": torch.__version__,
            "measured_bf16_matmul_tflops": 1.0,
        }
        cfg = Esm2Config(num_layers=2, embed_dim=64, heads=4, ffn_dim=256)
        args.skip_engine = True
    else:
        device = torch.device("cuda:0")
        results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
        results["measured_bf16_matmul_tflops"] = measured_peak() / 1e12
        cfg = Esm2Config(num_layers=36, embed_dim=2560, heads=40, ffn_dim=4 * 2560)
    state = random_state(cfg, device)
    rows = []
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        model = build_esm2_model(cfg, state, None, device, dtype)
        embedder = Esm2Embedder(
            model, EmbedderSpec("esm2", "-", "random-3B", precision=precision), device
        )
        for tpb in (int(v) for v in args.tokens_per_batch.split(",")):
            batches = engine_batches(tpb)
            seconds = time_forward(embedder, batches)
            real = sum(len(e) for b in batches for e in b)
            slots = sum(max(len(e) for e in b) * len(b) for b in batches)
            total_flops = sum(flops(cfg, b) for b in batches)
            rows.append(
                {
                    "precision": precision,
                    "tokens_per_batch": tpb,
                    "batches": len(batches),
                    "seconds": seconds,
                    "tokens_per_s": real / seconds,
                    "padding_fraction": (slots - real) / slots,
                    "mfu_datasheet": total_flops / seconds / (args.peak_tflops * 1e12),
                    "mfu_measured_matmul": total_flops
                    / seconds
                    / (results["measured_bf16_matmul_tflops"] * 1e12),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        del model, embedder
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["esm2_3B"] = rows
    if not args.skip_engine:
        results["engine"] = engine_vs_bare(device)
    print(json.dumps(results, indent=2))


def engine_vs_bare(device) -> dict:
    """`virnucpro embed` end to end on cuda:0 vs the bare forward on the same batches."""
    from virnucpro.models.base import EmbedderSpec, load_embedder
    from virnucpro.models.tiny import write_tiny_esm2_hf

    tmp = Path(tempfile.mkdtemp())
    folder = write_tiny_esm2_hf(
        tmp / "esm2_650M_random", num_layers=33, hidden=1280, heads=20, use_transformers=False
    )
    embedder = load_embedder(
        EmbedderSpec("esm2", str(folder), "random-650M", precision="bf16"), device
    )
    batches = engine_batches(16384)
    bare = time_forward(embedder, batches, repeats=1)
    real = sum(len(e) for b in batches for e in b)
    del embedder
    torch.cuda.empty_cache()
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "virnucpro",
            "embed",
            str(DATA),
            "-o",
            str(tmp / "out"),
            "--model",
            str(folder),
            "--devices",
            "0",
            "--precision",
            "bf16",
            "--tokens-per-batch",
            "16384",
            "--quiet",
        ],
        check=True,
    )
    wall = time.perf_counter() - start
    report = json.loads((tmp / "out" / "run.json").read_text())
    compute = report["timings_s"]["compute"]
    return {
        "bare_tokens_per_s": real / bare,
        "engine_compute_tokens_per_s": real / compute,
        "engine_wall_s_incl_start": wall,
        "ratio_compute_vs_bare": bare / compute,
        "padding_fraction": report["padding_fraction"],
    }


if __name__ == "__main__":
    main()
