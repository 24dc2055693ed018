"""Benchmark ``train``'s epoch on feature rows stored as the engine writes them, against a
bare PyTorch loop over the same rows held in memory.

Setup (not timed): ``--rows`` rows of synthetic features (two classes with shifted means) are
written as two engine-layout HDF5 files (``ids`` UTF-8 strings, contiguous float32
``embeddings``; DNABERT-S part ``--dna-width`` wide, ESM-2 part ``--esm-width``) plus a
dataset.tsv with a 10% validation split. Each measurement runs in a fresh child process:

- ``ours`` (scikit-learn imported before the clock starts, as it is once per real run):
  ``training.data.FeatureRows`` + ``training.trainer.Trainer`` (bounded-memory block
  reads joined by id, seeded block order and window shuffle, the SPEC MLP with SGD/StepLR),
  one epoch: the training pass, then validation (loss + metrics) and the atomic checkpoint;
- ``bare``: every row loaded into one in-memory tensor first (not timed), then the same
  model, optimizer and batch size: ``randperm`` + index per batch, then a validation forward.

Both use the thread count ``Trainer`` picks. Reported: seconds per epoch (best of
``--repeats`` interleaved runs), the rate ratio ours/bare (target >= 0.8) and each child's
peak RSS.

    python bench/bench_train.py [--rows 1000000] [--dna-width 128] [--esm-width 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common
import numpy as np

BLOCK = 1 << 16


def write_rows(folder: Path, rows: int, dna_width: int, esm_width: int, seed: int = 0) -> None:
    """Two engine-layout HDF5 files and a dataset.tsv (setup, not timed)."""
    import h5py

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=rows)
    ids = [f"r{i}_chunk_1F1" for i in range(rows)]
    for name, width in (("dna.h5", dna_width), ("esm.h5", esm_width)):
        with h5py.File(folder / name, "w") as f:
            ds_ids = f.create_dataset("ids", shape=(rows,), dtype=h5py.string_dtype("utf-8"))
            data = f.create_dataset("embeddings", shape=(rows, width), dtype=np.float32)
            for start in range(0, rows, BLOCK):
                stop = min(start + BLOCK, rows)
                ds_ids[start:stop] = np.array(ids[start:stop], dtype=h5py.string_dtype("utf-8"))
                block = rng.normal(size=(stop - start, width)).astype(np.float32)
                block += 0.05 * labels[start:stop, None]
                data[start:stop] = block
    with open(folder / "dataset.tsv", "w") as f:
        f.write("id\tlabel\tgroup\tsource\trecord\tsplit\n")
        for i in range(rows):
            split = "validation" if i % 10 == 0 else "train"
            label = "viral" if labels[i] else "other"
            f.write(f"{ids[i]}\t{label}\tg\ts\tr{i}\t{split}\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_ours(folder: Path) -> dict:
    from virnucpro.training.data import FeatureRows
    from virnucpro.training.trainer import Hyperparameters, Trainer, epoch_metrics, evaluate_split

    rows = FeatureRows(folder / "dataset.tsv", folder / "dna.h5", folder / "esm.h5")
    hyper = Hyperparameters(epochs=1)
    trainer = Trainer(rows, hyper, folder, {"bench": True}, quiet=True)
    import sklearn.metrics  # noqa: F401  (imported once per run, not per epoch: warm it here)
    import torch

    torch.manual_seed(hyper.seed)
    setup_rss = peak_rss_mb()
    t0 = time.perf_counter()
    trainer._train_epoch(rows.splits["train"], 1)
    t1 = time.perf_counter()
    val = rows.splits["validation"]
    _, p = evaluate_split(trainer.model, rows, val, trainer.device)
    epoch_metrics(val.labels, p)
    trainer._save()
    t2 = time.perf_counter()
    return {
        "train_s": t1 - t0,
        "epoch_s": t2 - t0,
        "validation_and_checkpoint_s": t2 - t1,
        "threads": torch.get_num_threads(),
        "rows": len(rows.splits["train"]) + len(val),
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": peak_rss_mb(),
    }


def child_bare(folder: Path) -> dict:
    import h5py
    import torch
    import torch.nn.functional as F

    from virnucpro.training.data import read_table
    from virnucpro.training.trainer import Hyperparameters, build_model, cpu_threads

    ids, labels, splits = read_table(folder / "dataset.tsv")
    with h5py.File(folder / "dna.h5") as a, h5py.File(folder / "esm.h5") as b:
        x = np.concatenate([a["embeddings"][()], b["embeddings"][()]], axis=1)
    y = np.array([lab == "viral" for lab in labels], dtype=np.int64)
    train = np.array([s == "train" for s in splits])
    xt, yt = torch.from_numpy(x[train]), torch.from_numpy(y[train])
    xv, yv = torch.from_numpy(x[~train]), torch.from_numpy(y[~train])
    del x
    hyper = Hyperparameters(epochs=1)
    threads = cpu_threads(xt.shape[1], hyper)
    if threads is not None:
        torch.set_num_threads(threads)
    model = build_model(xt.shape[1], hyper)
    opt = torch.optim.SGD(model.parameters(), lr=hyper.lr, momentum=hyper.momentum)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hyper.step_size, gamma=hyper.gamma)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    model.train()
    perm = torch.randperm(len(yt), generator=g)
    for start in range(0, len(yt), hyper.batch_size):
        idx = perm[start : start + hyper.batch_size]
        if len(idx) < 2:
            continue
        opt.zero_grad()
        loss = F.cross_entropy(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
        float(loss.detach())
    sched.step()
    t1 = time.perf_counter()
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(yv), 8192):
            logits = model(xv[start : start + 8192])
            F.cross_entropy(logits, yv[start : start + 8192])
            torch.softmax(logits, dim=1)
    t2 = time.perf_counter()
    return {
        "train_s": t1 - t0,
        "epoch_s": t2 - t0,
        "threads": torch.get_num_threads(),
        "rows": len(y),
        "peak_rss_mb": peak_rss_mb(),
    }


def run_child(mode: str, folder: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--folder", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dna-width", type=int, default=128)
    parser.add_argument("--esm-width", type=int, default=128)
    parser.add_argument("--child", choices=["ours", "bare"], default=None)
    parser.add_argument("--folder", type=Path, default=None)
    common.add_measurement_options(parser)
    args = parser.parse_args()
    if args.child:
        fn = child_ours if args.child == "ours" else child_bare
        print(json.dumps(fn(args.folder)))
        return
    info = common.print_machine()
    common.print_command("bench_train.py", args)
    quiet = common.Quiet(max_wait=args.max_wait)
    width = args.dna_width + args.esm_width
    with tempfile.TemporaryDirectory() as tmp_name:
        folder = Path(tmp_name)
        t = time.perf_counter()
        write_rows(folder, args.rows, args.dna_width, args.esm_width)
        size = sum(p.stat().st_size for p in folder.glob("*.h5")) / 2**20
        print(f"setup: {args.rows:,} rows x {width} float32 in {size:,.0f} MiB of HDF5 "
              f"({time.perf_counter() - t:.0f} s)", flush=True)  # fmt: skip
        best: dict[str, dict] = {}
        for _ in range(args.repeats):  # interleaved
            for mode in ("ours", "bare"):
                quiet.wait()
                r = run_child(mode, folder)
                print(f"  {mode}: {r}", flush=True)
                if mode not in best or r["epoch_s"] < best[mode]["epoch_s"]:
                    best[mode] = r
    ours, bare = best["ours"], best["bare"]
    rows = []
    for name, r in best.items():
        rows.append(
            (name, f"{r['train_s']:.1f}", f"{r['epoch_s']:.1f}",
             f"{r['rows'] / r['epoch_s']:,.0f}", r["threads"], f"{r['peak_rss_mb']:,.0f}")
        )  # fmt: skip
    headers = ("loop", "train pass s", "epoch s", "rows/s", "threads", "peak RSS MiB")
    print(common.markdown_table(headers, rows))
    ratio = bare["epoch_s"] / ours["epoch_s"]
    train_ratio = bare["train_s"] / ours["train_s"]
    print(f"epoch rate ours/bare: {ratio:.2f} (train pass alone {train_ratio:.2f}); "
          f"target >= 0.8: {common.verdict(ratio >= 0.8)}")  # fmt: skip
    print(f"features in memory, bare: {args.rows * width * 4 / 2**20:,.0f} MiB; ours holds at "
          f"most one window (32,768 rows = {32768 * width * 4 / 2**20:,.0f} MiB)")  # fmt: skip
    print(quiet.summary())
    print(f"load average at start: {info['load_average_1min']}")


if __name__ == "__main__":
    main()
