"""Benchmark the embedding engine on CPU against the bare model and a plain transformers loop.

Real proteins (``HG003687.proteins.faa.gz``, a stride sample keeping the file's length mix) are
embedded with RANDOM weights in real ESM-2 geometries, written as Hugging Face folders. One run
measures, for each geometry, with every configuration interleaved and repeated (best of N):

* end to end: wall-clock of ``virnucpro.api.embed`` (index, plan, spawn, load, compute, merge)
  with 1 CPU worker (all threads) and with 2 workers (threads split);
* bare forward: ``Esm2Embedder.forward`` alone, in this process, on exactly the batches the
  engine builds (``plan_units`` + ``token_budget_batches``, same ``tokens_per_batch``);
* plain loop: ``transformers.EsmModel`` from the same folder, batches of 8 in file order,
  padded, ``attention_mask``, mean over residues, ``torch.inference_mode``.

Rates are real tokens (``<cls>``/``<eos>`` included, padding excluded) per second; the
figures that matter are the ratios, measured within this one run.

    python bench/bench_embed.py [--proteins 160] [--models t6,t12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ast
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import common
import numpy as np
import torch

GEOMETRIES = {  # fair-esm name: (layers, dim, heads), SPEC 2.1
    "t6": ("esm2_t6_8M_UR50D", 6, 320, 20),
    "t12": ("esm2_t12_35M_UR50D", 12, 480, 20),
    "t30": ("esm2_t30_150M_UR50D", 30, 640, 20),
}
PLAIN_BATCH = 8
TARGET_PADDING = 0.05
TARGET_VS_BARE = 0.85
TARGET_VS_PLAIN = 1.5


@dataclass
class Timings:
    """Best-of-N seconds per configuration and what the runs reported."""

    seconds: dict[str, list[float]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    details: dict[str, dict] = field(default_factory=dict)

    def add(self, name: str, seconds: float, tokens: int, details: dict | None = None) -> None:
        self.seconds.setdefault(name, []).append(seconds)
        self.tokens[name] = tokens
        if seconds <= min(self.seconds[name]):
            self.details[name] = details or {}

    def rate(self, name: str) -> float:
        return self.tokens[name] / common.best(self.seconds[name])


# --------------------------------------------------------------------------- end to end


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


_UNIT_START = re.compile(r" unit \S+: \d+ sequences$")


def _log_times(path: Path, pattern: re.Pattern) -> list[float]:
    """Epoch seconds of the worker-log lines matching ``pattern``."""
    times = []
    for line in path.read_text().splitlines():
        match = _LOG_TIME.match(line)
        if match and pattern.search(line):
            stamp = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            times.append(stamp.timestamp())
    return times


def _unit_seconds(log: Path) -> float:
    """Seconds the worker spent inside units (reading, encoding, forward), from its log."""
    total = 0.0
    for line in log.read_text().splitlines():
        if " committed: " in line:
            total += ast.literal_eval(line.split(" committed: ", 1)[1])["seconds"]
    return total


def run_end_to_end(fasta: Path, out: Path, spec, workers: int, tokens_per_batch: int) -> dict:
    """One fresh ``embed`` run; wall seconds and what run.json and the worker logs say."""
    from virnucpro.api import embed

    started = time.time()
    seconds, result = common.timed(
        lambda: embed(fasta, out, spec, devices="cpu", world_size=workers,
                      tokens_per_batch=tokens_per_batch, quiet=True)
    )
    if result.exit_code != 0 or result.embedded != result.expected:
        raise SystemExit(f"embed run in {out} incomplete: {result}")
    report = common.load_json(out / "run.json")
    logs = sorted((out / "logs").glob("worker_*.log"))
    first_unit = min(t for log in logs for t in _log_times(log, _UNIT_START))
    return {
        "seconds": seconds,
        "tokens": report["tokens"],
        "padded_slots": report["padded_slots"],
        "padding_fraction": report["padding_fraction"],
        "timings_s": report["timings_s"],
        "to_first_unit_s": first_unit - started,
        "in_units_s": sum(_unit_seconds(log) for log in logs),
        "output": out / "embeddings.h5",
    }


# --------------------------------------------------------------------------- bare forward


def engine_batches(fasta: Path, work: Path, spec, embedder, tokens_per_batch: int) -> list:
    """The encoded batches the engine builds for this job, unit by unit."""
    from virnucpro.engine.batching import token_budget_batches
    from virnucpro.engine.units import default_unit_tokens, plan_units
    from virnucpro.io.index import build_or_load
    from virnucpro.models.base import planning_tokens

    index = build_or_load([fasta], work / "index")
    costs = planning_tokens(spec, index.lengths)
    unit_tokens = default_unit_tokens(int(costs.sum()), tokens_per_batch)
    batches = []
    for unit in plan_units(index.order, costs, unit_tokens):
        encoded = [embedder.encode(s) for s in index.sequences(unit.positions)]
        for batch in token_budget_batches([len(e) for e in encoded], tokens_per_batch):
            batches.append([encoded[i] for i in batch])
    return batches


def run_bare(embedder, batches: list) -> float:
    """Seconds of ``Esm2Embedder.forward`` over every batch (the loop adds nothing else)."""
    start = time.perf_counter()
    for batch in batches:
        embedder.forward(batch)
    return time.perf_counter() - start


# --------------------------------------------------------------------------- plain loop


def run_plain(model, records: list[tuple[str, str]]) -> tuple[float, np.ndarray]:
    """A plain transformers loop: batches of 8 in file order, padded, masked mean pooling."""
    from virnucpro.models.esm2 import PAD_IDX, encode_protein

    vectors = []
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(records), PLAIN_BATCH):
            encoded = [encode_protein(seq) for _, seq in records[i : i + PLAIN_BATCH]]
            width = max(len(e) for e in encoded)
            ids = torch.full((len(encoded), width), PAD_IDX, dtype=torch.long)
            mask = torch.zeros((len(encoded), width), dtype=torch.long)
            for row, e in enumerate(encoded):
                ids[row, : len(e)] = torch.from_numpy(e)
                mask[row, : len(e)] = 1
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            residues = mask.clone()
            residues[:, 0] = 0
            residues[torch.arange(len(encoded)), mask.sum(1) - 1] = 0
            weights = residues.float() / residues.sum(1, keepdim=True)
            vectors.append(torch.einsum("bt,btc->bc", weights, hidden).numpy())
    return time.perf_counter() - start, np.concatenate(vectors)


# --------------------------------------------------------------------------- driver


def bench_geometry(key: str, fasta: Path, records, tmp: Path, args) -> dict:
    from transformers import EsmModel

    from virnucpro.api import resolve_model
    from virnucpro.models.base import load_embedder
    from virnucpro.models.tiny import write_tiny_esm2_hf
    from virnucpro.reader import read_embeddings

    name, layers, dim, heads = GEOMETRIES[key]
    folder = write_tiny_esm2_hf(tmp / name, num_layers=layers, hidden=dim, heads=heads, seed=0)
    spec = resolve_model(str(folder))
    torch.set_num_threads(common.machine()["cores"])
    embedder = load_embedder(spec, torch.device("cpu"))
    batches = engine_batches(fasta, tmp / f"{key}_bare", spec, embedder, args.tokens_per_batch)
    bare_tokens = sum(len(e) for b in batches for e in b)
    bare_slots = sum(max(len(e) for e in b) * len(b) for b in batches)
    plain = EsmModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    embedder.forward(batches[-1])  # warm-up of the in-process paths
    run_plain(plain, records[:PLAIN_BATCH])
    t = Timings()
    plain_vectors = None
    for repeat in range(args.repeats):
        for workers in args.workers:
            run = run_end_to_end(fasta, tmp / f"{key}_w{workers}_r{repeat}", spec, workers,
                                 args.tokens_per_batch)
            t.add(f"e2e_{workers}w", run["seconds"], run["tokens"], run)
        t.add("bare", run_bare(embedder, batches), bare_tokens)
        seconds, plain_vectors = run_plain(plain, records)
        t.add("plain", seconds, bare_tokens)
        print(f"  {key} repeat {repeat + 1}/{args.repeats}: "
              + ", ".join(f"{n} {s[-1]:.1f}s" for n, s in t.seconds.items()), flush=True)
    ids, engine_vectors = read_embeddings(t.details[f"e2e_{args.workers[0]}w"]["output"])
    order = {i: row for row, i in enumerate(ids)}
    rows = [order[h.split()[0]] for h, _ in records]
    diff = float(np.abs(engine_vectors[rows] - plain_vectors).max())
    return {"key": key, "name": name, "timings": t, "bare_slots": bare_slots,
            "bare_tokens": bare_tokens, "max_abs_diff_vs_plain": diff}


def full_file_padding(records, tokens_per_batch: int, tmp: Path) -> float:
    """Padding of the engine's batches over the WHOLE protein file (planning only, no model)."""
    from virnucpro.api import resolve_model
    from virnucpro.models.esm2 import encode_protein
    from virnucpro.models.tiny import write_tiny_esm2_hf

    fasta = common.write_fasta(tmp / "all_proteins.faa", records)
    spec = resolve_model(str(write_tiny_esm2_hf(tmp / "plan_only", use_transformers=False)))

    class _Encoder:  # engine_batches needs only .encode
        encode = staticmethod(encode_protein)

    batches = engine_batches(fasta, tmp / "plan_only_index", spec, _Encoder, tokens_per_batch)
    tokens = sum(len(e) for b in batches for e in b)
    slots = sum(max(len(e) for e in b) * len(b) for b in batches)
    return (slots - tokens) / slots


def report(result: dict, workers: list[int]) -> None:
    t: Timings = result["timings"]
    bare, plain = t.rate("bare"), t.rate("plain")
    print(f"\n### {result['name']} geometry (random weights), {t.tokens['bare']:,} tokens")
    rows = []
    for w in workers:
        name = f"e2e_{w}w"
        d = t.details[name]
        rate = t.rate(name)
        rows.append([f"embed, {w} worker(s)", f"{common.best(t.seconds[name]):.1f}",
                     f"{rate:,.0f}", f"{rate / bare:.2f}", f"{rate / plain:.2f}",
                     f"{d['padding_fraction']:.2%}"])
    rows.append(["bare Esm2Embedder.forward", f"{common.best(t.seconds['bare']):.1f}",
                 f"{bare:,.0f}", "1.00", f"{bare / plain:.2f}",
                 f"{(result['bare_slots'] - result['bare_tokens']) / result['bare_slots']:.2%}"])
    rows.append(["plain transformers loop (8/batch)", f"{common.best(t.seconds['plain']):.1f}",
                 f"{plain:,.0f}", f"{plain / bare:.2f}", "1.00", "-"])
    print(common.markdown_table(
        ["configuration", "best s", "tokens/s", "x bare", "x plain", "padding"], rows))
    print("\nwhere the end-to-end time goes (best run):")
    for w in workers:
        d = t.details[f"e2e_{w}w"]
        tim = d["timings_s"]
        print(f"  {w} worker(s): index {tim.get('index', 0):.2f}s, to first unit "
              f"{d['to_first_unit_s']:.2f}s, inside units {d['in_units_s']:.1f} worker-s, "
              f"compute {tim.get('compute', 0):.1f}s, merge {tim.get('merge', 0):.2f}s")
    print(f"  max |engine - plain loop| over all vectors: {result['max_abs_diff_vs_plain']:.2e}")
    best_e2e = max(t.rate(f"e2e_{w}w") for w in workers)
    pad = t.details[f"e2e_{workers[0]}w"]["padding_fraction"]
    print(f"targets: padding {pad:.2%} <= 5%: {common.verdict(pad <= TARGET_PADDING)}; "
          f"best end to end {best_e2e / bare:.2f} x bare >= {TARGET_VS_BARE}: "
          f"{common.verdict(best_e2e >= TARGET_VS_BARE * bare)}; "
          f"{best_e2e / plain:.2f} x plain >= {TARGET_VS_PLAIN}: "
          f"{common.verdict(best_e2e >= TARGET_VS_PLAIN * plain)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--proteins", type=int, default=160,
                        help="stride sample of the 2,100 proteins (0: all)")
    parser.add_argument("--models", default="t6,t12", help=f"of {', '.join(GEOMETRIES)}")
    parser.add_argument("--workers", default="1,2", help="CPU worker counts to run end to end")
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    info = common.print_machine()
    print(f"command: python bench/bench_embed.py --proteins {args.proteins} --models "
          f"{args.models} --workers {args.workers} --tokens-per-batch {args.tokens_per_batch} "
          f"--repeats {args.repeats}")
    everything = common.read_fasta_pairs(common.PROTEINS)
    records = common.stride_sample(everything, args.proteins or None)
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as name:
        tmp = Path(name)
        fasta = common.write_fasta(tmp / "proteins.faa", records)
        whole = full_file_padding(everything, args.tokens_per_batch, tmp)
        print(f"{len(records)} of {len(everything)} proteins; padding of the engine's batches "
              f"over all {len(everything)} proteins (plan only): {whole:.2%}")
        for key in args.models.split(","):
            result = bench_geometry(key, fasta, records, tmp, args)
            report(result, args.workers)
    print(f"\nmeasured {info['date']}, best of {args.repeats} interleaved repeats")


if __name__ == "__main__":
    main()
