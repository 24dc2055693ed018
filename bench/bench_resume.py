"""Benchmark the engine's resilience costs: resuming a 90%-done run, and committing units.

(a) Resume overhead. A 90%-done run is made cleanly and reproducibly with the engine's own
fault-injection hook: ``VIRNUCPRO_TEST_CRASH_ID`` names the first sequence of the unit at which
90% of the planned tokens are committed, and ``max_retries=0`` turns the killed worker into a
partial run (exit 2) whose committed unit files stay in ``work/units``. Each repeat resumes a
fresh copy of that directory with the same call (no hook). Measured, for a fresh start and for
the resume: seconds from calling ``virnucpro.api.embed`` to the first unit started by a worker
(its log; the first batch's forward follows at once), split into the parent's part (index,
resume check, plan, spawn) and the worker's (imports, model load).

(b) Cost of committing units. The same job with many small units (one batch each), the
default plan, and one unit for the whole job (``unit_tokens`` larger than the job), 1 worker:
end-to-end rates, interleaved, best of N; plus the bookkeeping time measured directly in the
worker logs (unit write + hand-over to the next unit) as a share of the time inside units.

    python bench/bench_resume.py [--proteins 600] [--commit-proteins 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import ast
import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import common
import numpy as np

GEOMETRIES = {"tiny": (2, 32, 4), "t6": (6, 320, 20), "t12": (12, 480, 20)}
TARGET_COMMIT_OVERHEAD = 0.03


def make_spec(tmp: Path, geometry: str):
    from virnucpro.api import resolve_model
    from virnucpro.models.tiny import write_tiny_esm2_hf

    layers, dim, heads = GEOMETRIES[geometry]
    folder = write_tiny_esm2_hf(
        tmp / f"esm2_{geometry}", num_layers=layers, hidden=dim, heads=heads, seed=0
    )
    return resolve_model(str(folder))


def embed(
    fasta: Path, outs: Iterator[Path], spec, quiet: common.Quiet | None, **options
) -> tuple[Path, float, common.Measured]:
    """One ``api.embed`` call on 1 CPU worker into the next of ``outs`` (run again there when
    other jobs disturbed it, see ``common.measure``): directory, start epoch, measurement."""
    from virnucpro.api import embed as api_embed

    def once() -> tuple[Path, float, object]:
        out = next(outs)
        started = time.time()
        kwargs = {"devices": "cpu", "world_size": 1, "quiet": True}
        return out, started, api_embed(fasta, out, spec, **kwargs, **options)

    measured = common.timed(once) if quiet is None else common.measure(once, quiet)
    out, started, measured.result = measured.result
    return out, started, measured


def fresh_dirs(prefix: Path) -> Iterator[Path]:
    for n in itertools.count():
        yield prefix.with_name(f"{prefix.name}_{n}")


def copies_of(source: Path, count: int) -> Iterator[Path]:
    """``count`` copies of a run directory, made now (copying is not part of a measurement)."""
    made = []
    for n in range(count):
        made.append(source.with_name(f"{source.name}_copy{n}"))
        shutil.copytree(source, made[-1])
    return iter(made)


def crash_point(
    fasta: Path, work: Path, spec, fraction: float, unit_tokens: int | None, tokens_per_batch: int
) -> tuple[str, float]:
    """First sequence of the unit in which ``fraction`` of the planned tokens end, and the
    share of the planned tokens in the units before it (what the partial run commits)."""
    from virnucpro.engine.units import default_unit_tokens, plan_units
    from virnucpro.io.index import build_or_load
    from virnucpro.models.base import planning_tokens

    index = build_or_load([fasta], work)
    costs = planning_tokens(spec, index.lengths)
    size = unit_tokens or default_unit_tokens(int(costs.sum()), tokens_per_batch)
    units = plan_units(index.order, costs, size)
    done = np.cumsum([u.tokens for u in units]) / costs.sum()
    k = int(np.searchsorted(done, fraction))
    return index.ids[int(units[k].positions[0])], float(done[k - 1]) if k else 0.0


def to_first_unit(out: Path, started: float) -> dict[str, float]:
    """Seconds from the call to the first unit started, and the worker's share of them."""
    phases = common.engine_phases(out, since=started)
    worker = phases.get("spawn_import_s", 0.0) + phases.get("load_model_s", 0.0)
    total = phases["first_unit_at"] - started
    return {"total": total, "worker": worker, "parent": total - worker}


def bench_resume(fasta: Path, tmp: Path, spec, args, quiet) -> dict:
    sizes = {"unit_tokens": args.unit_tokens, "tokens_per_batch": args.tokens_per_batch}
    crash, token_share = crash_point(fasta, tmp / "plan_index", spec, args.done_fraction, **sizes)
    partial = tmp / "partial"
    os.environ["VIRNUCPRO_TEST_CRASH_ID"] = crash
    try:
        result = embed(fasta, iter([partial]), spec, None, max_retries=0, **sizes)[2].result
    finally:
        del os.environ["VIRNUCPRO_TEST_CRASH_ID"]
    if result.exit_code != 2 or not result.missing:
        raise SystemExit(f"the crash hook did not leave a partial run: {result}")
    units = sorted((partial / "work" / "units").glob("*.h5"))
    sequence_share = result.embedded / result.expected
    fresh, resumed, resume_total, fresh_total = [], [], [], []
    copies = copies_of(partial, 3 * args.repeats)
    fresh_outs = fresh_dirs(tmp / "fresh")
    for _ in range(args.repeats):
        out, started, measured = embed(fasta, fresh_outs, spec, quiet, **sizes)
        fresh.append({**to_first_unit(out, started), "foreign": measured.foreign})
        fresh_total.append(measured.seconds)
        copy, started, measured = embed(fasta, copies, spec, quiet, **sizes)
        again = measured.result
        if again.exit_code != 0 or again.embedded != again.expected:
            raise SystemExit(f"the resumed run is incomplete: {again}")
        report = common.load_json(copy / "run.json")
        resumed.append({**to_first_unit(copy, started), "foreign": measured.foreign})
        resume_total.append(measured.seconds)
    return {
        "crash_id": crash,
        "units_committed": len(units),
        "token_share": token_share,
        "sequence_share": sequence_share,
        "missing": result.missing,
        "planned": report["units"]["planned"],
        "reused_files": report["units"]["reused_files"],
        "computed": report["units"]["computed"],
        "fresh": fresh,
        "resumed": resumed,
        "fresh_total": fresh_total,
        "resume_total": resume_total,
    }


def commit_overhead(out: Path, started: float) -> dict[str, float]:
    """Worker-side bookkeeping per unit from the logs: write + hand-over, vs time in units."""
    events = common.log_events(out / "logs" / "worker_0.log", since=started)
    inside = bookkeeping = 0.0
    unit_start = None
    last_commit = None
    for t, message in events:
        if message.startswith("unit ") and message.endswith(" sequences"):
            if last_commit is not None:
                bookkeeping += t - last_commit  # result sent, next unit received
            unit_start = t
        elif " committed: " in message and unit_start is not None:
            seconds = ast.literal_eval(message.split(" committed: ", 1)[1])["seconds"]
            inside += seconds
            bookkeeping += (t - unit_start) - seconds  # writing the unit file
            last_commit = t
    return {"inside_s": inside, "bookkeeping_s": bookkeeping}


def bench_commit(fasta: Path, tmp: Path, spec, args, quiet) -> dict:
    configs = {
        "one batch per unit": args.tokens_per_batch,
        "default plan": None,
        "one unit for the job": 10**12,
    }
    results: dict[str, list[dict]] = {name: [] for name in configs}
    outs = {name: fresh_dirs(tmp / f"commit_{name.replace(' ', '_')}") for name in configs}
    for repeat in range(args.repeats):
        for name, unit_tokens in configs.items():
            out, started, measured = embed(
                fasta,
                outs[name],
                spec,
                quiet,
                unit_tokens=unit_tokens,
                tokens_per_batch=args.tokens_per_batch,
            )
            result = measured.result
            if result.exit_code != 0:
                raise SystemExit(f"{name}: incomplete run {result}")
            report = common.load_json(out / "run.json")
            results[name].append(
                {
                    "seconds": measured.seconds,
                    "foreign": measured.foreign,
                    "tokens": report["tokens"],
                    "slots": report["padded_slots"],
                    "units": report["units"]["planned"],
                    **commit_overhead(out, started),
                }
            )
        print(
            f"  commit repeat {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{n} {r[-1]['seconds']:.1f}s" for n, r in results.items()),
            flush=True,
        )
    return results


def print_resume(r: dict, repeats: int) -> None:
    fresh = min(r["fresh"], key=lambda x: x["total"])
    resumed = min(r["resumed"], key=lambda x: x["total"])
    print(
        f"\n### (a) resume of a run {r['token_share']:.0%} done by planned tokens "
        f"({r['sequence_share']:.0%} of the sequences, longest first), best of {repeats}"
    )
    print(
        f"partial run: crash hook on {r['crash_id']}, max_retries=0 -> {r['units_committed']} "
        f"unit files committed, {r['missing']} sequences missing; resume: "
        f"{r['reused_files']} unit files reused, {r['computed']} units computed "
        f"(of {r['planned']} planned)"
    )
    rows = [
        [
            label,
            f"{x['total']:.2f}",
            f"{x['parent']:.2f}",
            f"{x['worker']:.2f}",
            f"{t:.2f}",
            f"{x['foreign']:.0%}",
        ]
        for label, x, t in (
            ("fresh start", fresh, min(r["fresh_total"])),
            ("resume", resumed, min(r["resume_total"])),
        )
    ]
    print(
        common.markdown_table(
            [
                "run",
                "call -> first unit s",
                "parent part s",
                "worker start + load s",
                "whole run s",
                "other jobs' CPU",
            ],
            rows,
        )
    )
    extra = resumed["parent"] - fresh["parent"]
    print(
        f"resume overhead before the first new batch: {resumed['total'] - fresh['total']:+.2f} s "
        f"in all, {extra:+.2f} s in the parent (reading {r['reused_files']} unit files' "
        f"positions, the job state and the plan)"
    )


def print_commit(results: dict, repeats: int) -> None:
    print(f"\n### (b) cost of committing units, 1 worker (best of {repeats})")
    rows = []
    best = {name: min(runs, key=lambda x: x["seconds"]) for name, runs in results.items()}
    reference = best["one unit for the job"]
    ref_rate = reference["tokens"] / reference["seconds"]
    for name, b in best.items():
        rate = b["tokens"] / b["seconds"]
        share = b["bookkeeping_s"] / max(b["inside_s"], 1e-9)
        rows.append(
            [
                name,
                b["units"],
                f"{b['seconds']:.1f}",
                f"{rate:,.0f}",
                f"{rate / ref_rate:.3f}",
                f"{(b['slots'] - b['tokens']) / b['slots']:.2%}",
                f"{b['bookkeeping_s']:.3f}",
                f"{1000 * b['bookkeeping_s'] / b['units']:.1f}",
                f"{share:.2%}",
                f"{b['foreign']:.0%}",
                " / ".join(f"{r['seconds']:.1f}" for r in results[name]),
            ]
        )
    print(
        common.markdown_table(
            [
                "units",
                "count",
                "best s",
                "tokens/s",
                "x one unit",
                "padding",
                "bookkeeping s",
                "ms per unit",
                "bookkeeping / in-unit time",
                "other jobs' CPU",
                "all runs s",
            ],
            rows,
        )
    )
    many = best["one batch per unit"]
    share = many["bookkeeping_s"] / max(many["inside_s"], 1e-9)
    e2e = 1 - (many["tokens"] / many["seconds"]) / ref_rate
    print(
        f"target: committing {many['units']} units costs {share:.2%} of the in-unit time "
        f"(direct), {e2e:+.1%} end to end (includes noise and batch-boundary padding) "
        f"< {TARGET_COMMIT_OVERHEAD:.0%}: {common.verdict(share < TARGET_COMMIT_OVERHEAD)} "
        f"(direct measure)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--proteins", type=int, default=600, help="stride sample for (a) (0: all 2,100)"
    )
    parser.add_argument(
        "--geometry",
        choices=sorted(GEOMETRIES),
        default="tiny",
        help="random ESM-2 geometry for (a)",
    )
    parser.add_argument(
        "--commit-geometry",
        choices=sorted(GEOMETRIES),
        default="t6",
        help="random ESM-2 geometry for (b)",
    )
    parser.add_argument("--commit-proteins", type=int, default=300, help="stride sample for (b)")
    parser.add_argument("--done-fraction", type=float, default=0.9)
    parser.add_argument(
        "--unit-tokens",
        type=int,
        default=1024,
        help="unit size for (a): small units make many unit files to resume from",
    )
    parser.add_argument("--tokens-per-batch", type=int, default=4096)
    common.add_measurement_options(parser)
    args = parser.parse_args()
    quiet = common.Quiet(max_wait=args.max_wait)
    info = common.print_machine()
    common.print_command("bench_resume.py", args)
    everything = common.read_fasta_pairs(common.PROTEINS)
    with tempfile.TemporaryDirectory(prefix="bench_resume_") as name:
        tmp = Path(name)
        fasta = common.write_fasta(
            tmp / "proteins.faa", common.stride_sample(everything, args.proteins or None)
        )
        resume = bench_resume(fasta, tmp, make_spec(tmp, args.geometry), args, quiet)
        print_resume(resume, args.repeats)
        small = common.write_fasta(
            tmp / "commit.faa", common.stride_sample(everything, args.commit_proteins or None)
        )
        commit = bench_commit(small, tmp, make_spec(tmp, args.commit_geometry), args, quiet)
        print_commit(commit, args.repeats)
    print(f"\nmeasured {info['date']}; {quiet.summary()}")


if __name__ == "__main__":
    main()
