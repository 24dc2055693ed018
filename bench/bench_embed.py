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

    python bench/bench_embed.py [--proteins 100] [--models t6,t12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from dataclasses import dataclass, field
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
    """Every repeat of every configuration; figures come from the fastest repeat."""

    runs: dict[str, list[common.Measured]] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, measured: common.Measured, tokens: int) -> None:
        self.runs.setdefault(name, []).append(measured)
        self.tokens[name] = tokens

    def best(self, name: str) -> common.Measured:
        return min(self.runs[name], key=lambda m: m.seconds)

    def rate(self, name: str) -> float:
        return self.tokens[name] / self.best(name).seconds


# --------------------------------------------------------------------------- end to end


_RUNS = itertools.count()


def run_end_to_end(
    fasta: Path, tmp: Path, spec, workers: int, tokens_per_batch: int, quiet: common.Quiet
) -> common.Measured:
    """A fresh ``embed`` run (in a new directory): wall seconds, run.json and worker logs."""
    from virnucpro.api import embed

    def once() -> tuple[Path, float, object]:
        out = tmp / f"e2e_{workers}w_{next(_RUNS)}"
        started = time.time()
        kwargs = {"devices": "cpu", "world_size": workers, "quiet": True}
        return out, started, embed(fasta, out, spec, tokens_per_batch=tokens_per_batch, **kwargs)

    measured = common.measure(once, quiet)
    out, started, result = measured.result
    if result.exit_code != 0 or result.embedded != result.expected:
        raise SystemExit(f"embed run in {out} incomplete: {result}")
    report = common.load_json(out / "run.json")
    phases = common.engine_phases(out, since=started)
    measured.result = {
        "tokens": report["tokens"],
        "padded_slots": report["padded_slots"],
        "padding_fraction": report["padding_fraction"],
        "timings_s": report["timings_s"],
        "to_first_unit_s": phases["first_unit_at"] - started,
        "spawn_import_s": phases.get("spawn_import_s", float("nan")),
        "load_model_s": phases.get("load_model_s", float("nan")),
        "in_units_s": phases["in_units_worker_s"],
        "output": out / "embeddings.h5",
    }
    return measured


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
        lengths = [len(e) for e in encoded]
        for batch in token_budget_batches(lengths, tokens_per_batch, embedder.packed):
            batches.append([encoded[i] for i in batch])
    return batches


def run_bare(embedder, batches: list) -> None:
    """``Esm2Embedder.forward`` over every batch (the loop adds nothing else)."""
    for batch in batches:
        embedder.forward(batch)


# --------------------------------------------------------------------------- plain loop


def run_plain(model, records: list[tuple[str, str]]) -> np.ndarray:
    """A plain transformers loop: batches of 8 in file order, padded, masked mean pooling."""
    from virnucpro.models.esm2 import PAD_IDX, encode_protein

    vectors = []
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
    return np.concatenate(vectors)


def plain_padding(records: list[tuple[str, str]]) -> float:
    """Padded slots the plain loop computes beyond the real tokens, over its slots."""
    from virnucpro.models.esm2 import MAX_RESIDUES

    lengths = [min(len(seq), MAX_RESIDUES) + 2 for _, seq in records]
    groups = [lengths[i : i + PLAIN_BATCH] for i in range(0, len(lengths), PLAIN_BATCH)]
    slots = sum(max(g) * len(g) for g in groups)
    return (slots - sum(lengths)) / slots


# --------------------------------------------------------------------------- driver


def bench_geometry(key: str, fasta: Path, records, tmp: Path, args) -> dict:
    from transformers import EsmModel

    from virnucpro.api import resolve_model
    from virnucpro.engine.batching import computed_slots
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
    bare_slots = sum(computed_slots([len(e) for e in b], embedder.packed) for b in batches)
    plain = EsmModel.from_pretrained(str(folder), add_pooling_layer=False).eval()
    embedder.forward(batches[-1])  # warm-up of the in-process paths
    run_plain(plain, records[:PLAIN_BATCH])
    t = Timings()
    for repeat in range(args.repeats):
        for workers in args.workers:
            run = run_end_to_end(fasta, tmp / key, spec, workers, args.tokens_per_batch, args.quiet)
            t.add(f"e2e_{workers}w", run, run.result["tokens"])
        bare_run = common.measure(lambda: run_bare(embedder, batches), args.quiet)
        t.add("bare", bare_run, bare_tokens)
        t.add("plain", common.measure(lambda: run_plain(plain, records), args.quiet), bare_tokens)
        print(
            f"  {key} repeat {repeat + 1}/{args.repeats}: "
            + ", ".join(
                f"{n} {r[-1].seconds:.1f}s ({r[-1].foreign:.0%} foreign)" for n, r in t.runs.items()
            ),
            flush=True,
        )
    ids, engine_vectors = read_embeddings(t.best(f"e2e_{args.workers[0]}w").result["output"])
    order = {i: row for row, i in enumerate(ids)}
    rows = [order[h.split()[0]] for h, _ in records]
    diff = float(np.abs(engine_vectors[rows] - t.runs["plain"][-1].result).max())
    return {
        "key": key,
        "name": name,
        "timings": t,
        "bare_slots": bare_slots,
        "bare_tokens": bare_tokens,
        "max_abs_diff_vs_plain": diff,
        "plain_padding": plain_padding(records),
    }


def full_file_padding(records, tokens_per_batch: int, tmp: Path) -> tuple[float, int]:
    """Padding of the engine's batches over the WHOLE protein file (planning only, no model),
    and its real token count."""
    from virnucpro.api import resolve_model
    from virnucpro.engine.batching import computed_slots
    from virnucpro.models.esm2 import Esm2Embedder, encode_protein
    from virnucpro.models.tiny import write_tiny_esm2_hf

    fasta = common.write_fasta(tmp / "all_proteins.faa", records)
    spec = resolve_model(str(write_tiny_esm2_hf(tmp / "plan_only", use_transformers=False)))

    class _Encoder:  # engine_batches needs only .encode and .packed
        encode = staticmethod(encode_protein)
        packed = Esm2Embedder.packed

    batches = engine_batches(fasta, tmp / "plan_only_index", spec, _Encoder, tokens_per_batch)
    tokens = sum(len(e) for b in batches for e in b)
    slots = sum(computed_slots([len(e) for e in b], _Encoder.packed) for b in batches)
    return (slots - tokens) / slots, tokens


def report(result: dict, workers: list[int], full_tokens: int) -> None:
    t: Timings = result["timings"]
    bare, plain = t.rate("bare"), t.rate("plain")
    print(f"\n### {result['name']} geometry (random weights), {t.tokens['bare']:,} tokens")
    rows = []
    for w in workers:
        best = t.best(f"e2e_{w}w")
        rate = t.rate(f"e2e_{w}w")
        rows.append(
            [
                f"`api.embed`, {w} worker(s)",
                f"{best.seconds:.1f}",
                f"{rate:,.0f}",
                f"{rate / bare:.2f}",
                f"{rate / plain:.2f}",
                f"{best.result['padding_fraction']:.2%}",
                f"{best.foreign:.0%}",
            ]
        )
    bare_pad = (result["bare_slots"] - result["bare_tokens"]) / result["bare_slots"]
    best = t.best("bare")
    rows.append(
        [
            "bare `Esm2Embedder.forward`, same batches",
            f"{best.seconds:.1f}",
            f"{bare:,.0f}",
            "1.00",
            f"{bare / plain:.2f}",
            f"{bare_pad:.2%}",
            f"{best.foreign:.0%}",
        ]
    )
    best = t.best("plain")
    rows.append(
        [
            f"plain `transformers` loop, {PLAIN_BATCH} per batch",
            f"{best.seconds:.1f}",
            f"{plain:,.0f}",
            f"{plain / bare:.2f}",
            "1.00",
            f"{result['plain_padding']:.2%}",
            f"{best.foreign:.0%}",
        ]
    )
    print(
        common.markdown_table(
            [
                "configuration",
                "best s",
                "tokens/s",
                "x bare",
                "x plain",
                "padding",
                "other jobs' CPU",
            ],
            rows,
        )
    )
    print("\nwhere the end-to-end time goes (best run):")
    for w in workers:
        d = t.best(f"e2e_{w}w").result
        tim = d["timings_s"]
        print(
            f"  {w} worker(s): index {tim.get('index', 0):.2f}s; call -> first unit "
            f"{d['to_first_unit_s']:.2f}s (worker spawn + imports {d['spawn_import_s']:.2f}s, "
            f"model load {d['load_model_s']:.2f}s); inside units {d['in_units_s']:.1f} "
            f"worker-s; compute {tim.get('compute', 0):.1f}s; merge {tim.get('merge', 0):.2f}s"
        )
    print(f"  max |engine - plain loop| over all vectors: {result['max_abs_diff_vs_plain']:.2e}")
    w = max(workers, key=lambda n: t.rate(f"e2e_{n}w"))
    best_e2e = t.rate(f"e2e_{w}w")
    fixed = t.best(f"e2e_{w}w").seconds - t.best("bare").seconds
    projected = (full_tokens / bare) / (full_tokens / bare + fixed)
    pad = t.best(f"e2e_{workers[0]}w").result["padding_fraction"]
    print(
        f"targets ({w} worker(s), the faster): padding {pad:.2%} <= 5%: "
        f"{common.verdict(pad <= TARGET_PADDING)}; end to end {best_e2e / bare:.2f} x bare >= "
        f"{TARGET_VS_BARE}: {common.verdict(best_e2e >= TARGET_VS_BARE * bare)}; "
        f"{best_e2e / plain:.2f} x plain >= {TARGET_VS_PLAIN}: "
        f"{common.verdict(best_e2e >= TARGET_VS_PLAIN * plain)}"
    )
    print(
        f"  end to end minus bare forward = {fixed:.1f} s of fixed cost; for all "
        f"{full_tokens:,} tokens of the file that would give {projected:.2f} x bare "
        f"(projection, not a measurement)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--proteins", type=int, default=100, help="stride sample of the 2,100 proteins (0: all)"
    )
    parser.add_argument("--models", default="t6,t12", help=f"of {', '.join(GEOMETRIES)}")
    parser.add_argument("--workers", default="1,2", help="CPU worker counts to run end to end")
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    common.add_measurement_options(parser)
    args = parser.parse_args()
    info = common.print_machine()
    common.print_command("bench_embed.py", args)
    args.workers = [int(w) for w in args.workers.split(",")]
    args.quiet = common.Quiet(max_wait=args.max_wait)
    everything = common.read_fasta_pairs(common.PROTEINS)
    records = common.stride_sample(everything, args.proteins or None)
    with tempfile.TemporaryDirectory(prefix="bench_embed_") as name:
        tmp = Path(name)
        fasta = common.write_fasta(tmp / "proteins.faa", records)
        whole, full_tokens = full_file_padding(everything, args.tokens_per_batch, tmp)
        print(
            f"{len(records)} of {len(everything)} proteins; padding of the engine's batches "
            f"over all {len(everything)} proteins (plan only): {whole:.2%}"
        )
        for key in args.models.split(","):
            result = bench_geometry(key, fasta, records, tmp, args)
            report(result, args.workers, full_tokens)
    print(
        f"\nmeasured {info['date']}, best of {args.repeats} interleaved repeats; "
        f"{args.quiet.summary()}"
    )


if __name__ == "__main__":
    main()
