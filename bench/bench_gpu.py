"""GPU benchmark: ESM-2 3B geometry (random weights) in bf16/fp16 on one GPU, in ONE run.

Reports, for real protein lengths (../shared/data/HG003687.proteins.faa.gz), batched exactly as
the engine batches them: real tokens/s, padding fraction, model FLOPs utilisation (MFU)
against (a) the chip's dense half-precision peak from the datasheet and (b) a bf16 matmul
measured in the same run; and the engine end to end (`virnucpro embed` on cuda:0 with a
random esm2_t33_650M-geometry folder) against the bare forward of that model on the same
batches. Also (issue 14): DNABERT-S in its full geometry (12 x 768, random weights) packed
against padded, per attention kernel, on the same sequences (tokens/s, max difference); the
engine end to end against the bare forward on >= 20,000 proteins with the host-work overlap
on and off (``VIRNUCPRO_OVERLAP``); and ``virnucpro predict`` reads/s on 500 bp reads with
both models in their real geometries (random weights). Usage (repo root, on a GPU machine):

    python bench/bench_gpu.py [--peak-tflops 989] [--tokens-per-batch 16384,32768]
    python bench/bench_gpu.py --smoke          # tiny geometries on the CPU: checks the script
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


def engine_batches(tokens_per_batch: int, fasta: Path | None = None) -> list[list[np.ndarray]]:
    """The data set encoded and cut exactly as the engine cuts it (longest first)."""
    from virnucpro.engine.batching import token_budget_batches
    from virnucpro.io.fasta import read_records
    from virnucpro.models.esm2 import encode_protein

    encoded = [encode_protein(r.seq) for r in read_records(fasta or DATA)]
    encoded.sort(key=len, reverse=True)
    return [
        [encoded[i] for i in b]
        for b in token_budget_batches([len(e) for e in encoded], tokens_per_batch, packed=True)
    ]


def flops(cfg, batch: list[np.ndarray]) -> float:
    """Model forward FLOPs of a batch's REAL tokens (padding is not useful work).

    Per sequence of L tokens and per layer: 24 d^2 L for the projections and FFN (ffn = 4d)
    plus 4 L^2 d for the attention scores and the weighted sum.
    """
    d = cfg.embed_dim
    return sum(cfg.num_layers * (24 * d * d * len(e) + 4 * len(e) ** 2 * d) for e in batch)


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


def gemm_ceiling(cfg, device, tokens: int = 16384) -> float:
    """TFLOP/s of one layer's four projections alone (bf16, ``tokens`` rows): the matmul bound."""
    d, f = cfg.embed_dim, cfg.ffn_dim
    x = torch.randn(tokens, d, device=device, dtype=torch.bfloat16)
    h = torch.randn(tokens, f, device=device, dtype=torch.bfloat16)
    layers = [
        torch.nn.Linear(a, b, device=device, dtype=torch.bfloat16)
        for a, b in ((d, 3 * d), (d, d), (d, f), (f, d))
    ]

    def step() -> None:
        layers[0](x), layers[1](x), layers[2](x), layers[3](h)

    for _ in range(3):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(10):
        step()
    sync()
    return 10 * 2 * tokens * (4 * d * d + 2 * d * f) / (time.perf_counter() - start) / 1e12


def check_numerics(device) -> dict:
    """Native ESM-2 vs transformers ``EsmModel`` on this device (fp32), and bf16/fp16 vs fp32."""
    from transformers import EsmModel

    from virnucpro.io.fasta import read_records
    from virnucpro.models.base import EmbedderSpec, load_embedder
    from virnucpro.models.esm2 import encode_protein
    from virnucpro.models.tiny import write_tiny_esm2_hf

    records = list(read_records(DATA))[::97][:20]
    folder = write_tiny_esm2_hf(
        Path(tempfile.mkdtemp()) / "esm2_tiny", num_layers=4, hidden=64, heads=4
    )
    encoded = [encode_protein(r.seq) for r in records]
    ref = EsmModel.from_pretrained(str(folder), add_pooling_layer=False).to(device).eval()
    rows = []
    with torch.inference_mode():
        for ids in encoded:
            hidden = ref(torch.from_numpy(ids)[None].to(device)).last_hidden_state[0]
            rows.append(hidden[1:-1].float().mean(0).cpu().numpy())
    reference = np.stack(rows)
    out = {"sequences": len(encoded), "longest": max(len(e) for e in encoded)}
    vectors = {}
    for precision in ("fp32", "bf16", "fp16"):
        spec = EmbedderSpec("esm2", str(folder), "tiny", precision=precision)
        embedder = load_embedder(spec, device)
        vectors[precision] = embedder.forward(encoded).pooled["embeddings"]
    out["fp32_max_abs_vs_transformers"] = float(np.abs(vectors["fp32"] - reference).max())
    for precision in ("bf16", "fp16"):
        a, b = vectors[precision], vectors["fp32"]
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        out[f"{precision}_min_cosine_vs_fp32"] = float(cos.min())
    return out


def measure_3b(cfg, device, args, results: dict) -> None:
    """Numerics check, matmul ceiling, and the 3B-geometry rows (both precisions, each budget)."""
    from virnucpro.engine.batching import computed_slots
    from virnucpro.models.base import EmbedderSpec
    from virnucpro.models.esm2 import Esm2Embedder, build_esm2_model

    results["numerics"] = check_numerics(device)
    print(json.dumps(results["numerics"]), flush=True)
    results["gemm_only_tflops_16k_tokens"] = gemm_ceiling(cfg, device)
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
            slots = sum(computed_slots([len(e) for e in b], embedder.packed) for b in batches)
            total_flops = sum(flops(cfg, b) for b in batches)
            rows.append(
                {
                    "precision": precision,
                    "tokens_per_batch": tpb,
                    "batches": len(batches),
                    "seconds": seconds,
                    "tokens_per_s": real / seconds,
                    "model_tflops_per_s": total_flops / seconds / 1e12,
                    "padding_fraction": (slots - real) / slots,
                    "attention": embedder.describe()["attention"],
                    "mfu_datasheet": total_flops / seconds / (args.peak_tflops * 1e12),
                    "mfu_measured_matmul": total_flops
                    / seconds
                    / (results["measured_bf16_matmul_tflops"] * 1e12),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            results["esm2_3B"] = rows
            if args.out:
                args.out.write_text(json.dumps(results, indent=2))
        del model, embedder
        if device.type == "cuda":
            torch.cuda.empty_cache()
    results["esm2_3B"] = rows


def main() -> None:
    global DATA
    from virnucpro.models.esm2 import Esm2Config

    p = argparse.ArgumentParser()
    p.add_argument("--peak-tflops", type=float, default=989.0, help="datasheet dense bf16 peak")
    p.add_argument("--tokens-per-batch", default="4096,16384,32768,65536")
    p.add_argument("--data", type=Path, default=DATA, help="protein FASTA (default: %(default)s)")
    p.add_argument("--out", type=Path, help="also write the results here as JSON, row by row")
    p.add_argument("--skip-engine", action="store_true")
    p.add_argument("--only-engine", action="store_true", help="skip the 3B measurements")
    p.add_argument(
        "--engine-copies", default="10", help="engine runs over the file N times (10: 21,000)"
    )
    p.add_argument("--smoke", action="store_true", help="tiny geometry on CPU: checks the script")
    p.add_argument("--skip-dnabert", action="store_true")
    p.add_argument("--skip-predict", action="store_true")
    p.add_argument("--predict-reads", type=int, default=20_000)
    p.add_argument("--overlap", default="1,0", help="VIRNUCPRO_OVERLAP values for the engine")
    args = p.parse_args()
    DATA = args.data
    if args.smoke:
        device = torch.device("cpu")
        results = {
            "gpu": "none (smoke)",
            "torch": torch.__version__,
            "measured_bf16_matmul_tflops": 1.0,
        }
        cfg = Esm2Config(num_layers=2, embed_dim=64, heads=4, ffn_dim=256)
    else:
        device = torch.device("cuda:0")
        results = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__}
        results["measured_bf16_matmul_tflops"] = measured_peak() / 1e12
        cfg = Esm2Config(num_layers=36, embed_dim=2560, heads=40, ffn_dim=4 * 2560)
    if not args.only_engine:
        measure_3b(cfg, device, args, results)
    if not args.skip_dnabert:
        results["dnabert_s"] = guarded(lambda: dnabert_packed_vs_padded(device, args.smoke))
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
    if not args.skip_engine:
        results["engine"] = guarded(
            lambda: [
                engine_vs_bare(device, smoke=args.smoke, copies=int(n), overlap=flag)
                for n in args.engine_copies.split(",")
                for flag in args.overlap.split(",")
            ]
        )
        if args.out:
            args.out.write_text(json.dumps(results, indent=2))
    if not args.skip_predict:
        results["predict"] = guarded(lambda: predict_real_geometry(device, args))
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


def guarded(measure):
    """Run one measurement; a failure is recorded (with the command's stderr), not fatal."""
    try:
        return measure()
    except (subprocess.CalledProcessError, OSError, RuntimeError, ValueError) as exc:
        stderr = getattr(exc, "stderr", "") or ""
        return {"error": repr(exc)[-500:], "stderr": stderr[-3000:]}


def random_dna(rng: np.random.Generator, count: int, low: int, high: int) -> list[str]:
    return ["".join(rng.choice(list("ACGT"), size=int(n))) for n in rng.integers(low, high, count)]


def dnabert_packed_vs_padded(device, smoke: bool = False) -> list[dict]:
    """DNABERT-S full geometry (random weights), packed per kernel vs padded, same batches."""
    import os

    from virnucpro.engine.batching import computed_slots, token_budget_batches
    from virnucpro.models import alibi_attention
    from virnucpro.models.dnabert_s import load_dnabert_embedder, resolve_dnabert
    from virnucpro.models.tiny_dnabert import write_tiny_dnabert_s

    geometry = (
        dict(num_layers=2, hidden=48, heads=12, intermediate=96, vocab_size=96)
        if smoke
        else dict(num_layers=12, hidden=768, heads=12, intermediate=3072, vocab_size=4096)
    )
    folder = write_tiny_dnabert_s(Path(tempfile.mkdtemp()) / "dnabert_s", **geometry)
    precision = "fp32" if smoke else "bf16"
    embedder = load_dnabert_embedder(resolve_dnabert(str(folder), precision=precision), device)
    rng = np.random.default_rng(0)
    # VirNucPro's DNABERT-S inputs: the 3P+1 nt paired with each kept frame, up to ~1.5 kb
    encoded = [embedder.encode(s) for s in random_dna(rng, 300 if smoke else 8000, 100, 1501)]
    lengths = [len(e) for e in encoded]
    budget = 4096 if smoke else 16384
    rows = []
    reference = None
    for kernel in (None, *alibi_attention.KERNELS):  # None: the padded path
        if kernel is not None:
            os.environ[alibi_attention.ENV] = kernel
        packed = kernel is not None
        batches = [[encoded[i] for i in b] for b in token_budget_batches(lengths, budget, packed)]
        forward = embedder.forward if packed else embedder.forward_padded
        try:
            vectors = np.concatenate([forward(b).pooled["embeddings"] for b in batches[:2]])
            seconds = time_forward(_Calls(forward), batches, repeats=2)
        except Exception as exc:  # noqa: BLE001 - a kernel that does not run here is reported
            rows.append({"kernel": kernel, "error": repr(exc)[-300:]})
            continue
        finally:
            os.environ.pop(alibi_attention.ENV, None)
        if reference is None:
            reference = vectors
        cos = (vectors * reference).sum(1) / (
            np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
        )
        slots = sum(computed_slots([len(e) for e in b], packed) for b in batches)
        rows.append(
            {
                "kernel": kernel or "padded (dense ALiBi + padding bias)",
                "precision": precision,
                "tokens_per_batch": budget,
                "batches": len(batches),
                "s_per_pass": seconds,
                "tokens_per_s": sum(lengths) / seconds,
                "padding_fraction": (slots - sum(lengths)) / slots,
                "min_cosine_vs_padded": float(cos.min()),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


class _Calls:
    """Adapts a forward function to ``time_forward``'s ``embedder.forward`` calls."""

    def __init__(self, forward) -> None:
        self.forward = forward


def predict_real_geometry(device, args) -> dict:
    """``virnucpro predict`` reads/s, 500 bp reads, both models in real geometries (random)."""
    sys.path.insert(0, str(REPO / "bench"))
    import bench_translate
    import common

    from virnucpro.models.classifier import write_original_format_classifier
    from virnucpro.models.tiny import write_tiny_esm2_hf
    from virnucpro.models.tiny_dnabert import write_tiny_dnabert_s

    tmp = Path(tempfile.mkdtemp())
    if args.smoke:
        esm_geometry, dna_geometry, reads_n = dict(num_layers=2, hidden=32, heads=4), {}, 500
        dna_width, esm_width = 48, 32
    else:
        esm_geometry = dict(num_layers=36, hidden=2560, heads=40)
        dna_geometry = dict(num_layers=12, hidden=768, heads=12, intermediate=3072, vocab_size=4096)
        reads_n, dna_width, esm_width = args.predict_reads, 768, 2560
    started = time.perf_counter()
    esm = write_tiny_esm2_hf(tmp / "esm2", **esm_geometry, use_transformers=False)
    dna = write_tiny_dnabert_s(tmp / "dnabert_s", **dna_geometry)
    classifier = write_original_format_classifier(tmp / "500_model.pth", dna_width + esm_width)
    written = time.perf_counter() - started
    reads = bench_translate.simulate_reads(common.GENOME, reads_n, 500, 0)
    fasta = common.write_fasta(tmp / "reads.fa", reads)
    command = [
        sys.executable, "-m", "virnucpro", "predict", str(fasta), "-o", str(tmp / "out"),
        "--esm-model", str(esm), "--dnabert-model", str(dna), "--classifier", str(classifier),
        "--devices", "cpu" if args.smoke else "0", "-q",
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    report = json.loads((tmp / "out" / "run.json").read_text())
    stages = {}
    for stage in ("dnabert_s", "esm2"):
        stage_report = json.loads((tmp / "out" / "stages" / stage / "run.json").read_text())
        stages[stage] = {
            "seconds": report["timings_s"][stage],
            "tokens": stage_report["tokens"],
            "padding_fraction": stage_report["padding_fraction"],
        }
    return {
        "reads": reads_n,
        "read_length": 500,
        "wall_s": wall,
        "reads_per_s": reads_n / wall,
        "frames": report["counts"].get("frames_kept"),
        "timings_s": report["timings_s"],
        "stages": stages,
        "writing_random_weights_s": written,
    }


def engine_vs_bare(device, smoke: bool = False, copies: int = 1, overlap: str = "1") -> dict:
    """`virnucpro embed` end to end on cuda:0 vs the bare forward on the same batches.

    ``copies`` > 1 embeds the protein file that many times over (ids made unique), so that the
    per-job start (spawn, CUDA, weights) weighs less against the work.
    """
    from virnucpro.io.fasta import read_records
    from virnucpro.models.base import EmbedderSpec, load_embedder
    from virnucpro.models.tiny import write_tiny_esm2_hf

    layers, hidden, heads = (2, 64, 4) if smoke else (33, 1280, 20)
    tmp = Path(tempfile.mkdtemp())
    fasta = tmp / "proteins.faa"
    with fasta.open("w") as handle:
        for record in read_records(DATA):
            for copy in range(copies):
                handle.write(f">{record.id}_c{copy}\n{record.seq}\n")
    folder = write_tiny_esm2_hf(
        tmp / "esm2_random", num_layers=layers, hidden=hidden, heads=heads, use_transformers=False
    )
    embedder = load_embedder(
        EmbedderSpec("esm2", str(folder), "random-650M", precision="bf16"), device
    )
    batches = engine_batches(16384, fasta)
    bare = time_forward(embedder, batches, repeats=1)
    real = sum(len(e) for b in batches for e in b)
    del embedder
    if device.type == "cuda":
        torch.cuda.empty_cache()
    start = time.perf_counter()
    import os

    subprocess.run(
        [
            sys.executable,
            "-m",
            "virnucpro",
            "embed",
            str(fasta),
            "-o",
            str(tmp / "out"),
            "--model",
            str(folder),
            "--devices",
            "cpu" if smoke else "0",
            "--precision",
            "bf16",
            "--tokens-per-batch",
            "16384",
            "--quiet",
        ],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "VIRNUCPRO_OVERLAP": overlap},
    )
    wall = time.perf_counter() - start
    report = json.loads((tmp / "out" / "run.json").read_text())
    compute = report["timings_s"]["compute"]
    log_lines = (tmp / "out" / "logs" / "worker_0.log").read_text().splitlines()
    inside = sum(
        float(line.split("'seconds': ")[1].split(",")[0])
        for line in log_lines
        if " committed: " in line and "'seconds': " in line
    )
    return {
        "overlap": overlap,
        "inside_units_s": inside,
        "ratio_inside_units_vs_bare": bare / inside if inside else None,
        "ratio_wall_vs_bare": bare / wall,
        "proteins": report["counts"]["embedded"] if "counts" in report else None,
        "tokens": real,
        "bare_s": bare,
        "bare_tokens_per_s": real / bare,
        "engine_compute_tokens_per_s": real / compute,
        "engine_wall_s_incl_start": wall,
        "ratio_compute_vs_bare": bare / compute,
        "padding_fraction": report["padding_fraction"],
        "timings_s": report["timings_s"],
        "worker_log_head": log_lines[:6],
        "worker_log_tail": log_lines[-4:],
    }


if __name__ == "__main__":
    main()
