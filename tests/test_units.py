"""Planning, batching and scheduling rules (pure functions; the processes are in test_engine)."""

from __future__ import annotations

import numpy as np
import pytest

from virnucpro.engine.batching import computed_slots, token_budget_batches
from virnucpro.engine.scheduler import Scheduler
from virnucpro.engine.units import default_unit_tokens, plan_units


def test_plan_covers_every_position_once_in_sorted_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 900, size=1000)
    order = np.argsort(-lengths, kind="stable")
    units = plan_units(order, lengths + 2, 5000)
    joined = np.concatenate([u.positions for u in units])
    assert np.array_equal(joined, order)
    assert all(u.tokens <= 5000 + 902 for u in units)
    assert len({u.key for u in units}) == len(units)


def test_plan_does_not_depend_on_anything_but_data_and_budget():
    lengths = np.arange(1, 300)
    order = np.argsort(-lengths, kind="stable")
    a = plan_units(order, lengths, 700)
    b = plan_units(order, lengths, 700)
    assert [u.key for u in a] == [u.key for u in b]
    assert all(np.array_equal(x.positions, y.positions) for x, y in zip(a, b, strict=True))


def test_default_unit_tokens_bounds():
    assert default_unit_tokens(10, 4096) == 4096
    assert default_unit_tokens(10**9, 4096) == 8 * 4096
    assert default_unit_tokens(16 * 10000, 4096) == 10000


def test_batches_respect_budget_and_keep_every_index():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 600, size=500).tolist() + [5000]
    batches = list(token_budget_batches(lengths, 2048))
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert width * len(batch) <= 2048 or len(batch) == 1
    real = sum(lengths)
    slots = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    assert (slots - real) / slots < 0.05  # sorted batches pad little


def test_packed_batches_count_real_tokens():
    lengths = [700, 600, 600, 500, 300, 300, 100, 5, 3000]
    batches = list(token_budget_batches(lengths, 1300, packed=True))
    assert batches == [[8], [0, 1], [2, 3], [4, 5, 6, 7]]
    assert [computed_slots([lengths[i] for i in b], packed=True) for b in batches] == [
        3000, 1300, 1100, 705,
    ]  # fmt: skip
    assert computed_slots([700, 600], packed=False) == 1400
    assert computed_slots([], packed=True) == 0


def _units(n_units: int, size: int):
    lengths = np.ones(n_units * size, dtype=np.int64)
    return plan_units(np.arange(n_units * size), lengths, size)


def test_scheduler_without_retries_reports_lost_unit_missing():
    s = Scheduler(_units(3, 4), max_retries=0)
    u0 = s.next_unit(0)
    u1 = s.next_unit(1)
    s.completed(0, u0.key)
    s.worker_lost(1, "killed")
    u2 = s.next_unit(0)
    s.completed(0, u2.key)
    assert s.finished
    positions, reasons = s.lost_positions("missing")
    assert np.array_equal(positions, u1.positions) and reasons == ["killed"] * 4


def test_scheduler_retries_then_isolates_a_poison_sequence():
    s = Scheduler(_units(1, 8), max_retries=2)
    poison = 5
    deaths = 0
    while not s.finished:
        unit = s.next_unit(0)
        if poison in unit.positions:
            s.worker_lost(0, "killed")
            deaths += 1
        else:
            s.completed(0, unit.key)
    positions, _ = s.lost_positions("failed")
    assert positions.tolist() == [poison]
    assert s.retries >= 2 and s.splits == 3
    # whole unit: 3 tries; halves of 4 and 2 holding it: one try each; the isolated one: 3 tries
    assert deaths == 3 + 2 + 3


def test_scheduler_returns_units_on_stop():
    s = Scheduler(_units(2, 2), max_retries=0)
    unit = s.next_unit(0)
    s.returned(0)
    assert s.next_unit(1).key == unit.key


def test_a_model_that_returns_too_few_rows_is_an_error(tmp_path, proteins, tiny_esm_hf):
    """Count in == count out per batch: a short result must not be broadcast into the rows."""
    import logging

    import torch

    from virnucpro.api import resolve_model
    from virnucpro.engine.worker import UnitRunner, WorkerConfig
    from virnucpro.errors import ValidationError
    from virnucpro.io.index import build_or_load
    from virnucpro.models.base import EmbedOutput
    from virnucpro.models.esm2 import load_esm2_embedder

    index = build_or_load([proteins], tmp_path / "index")
    spec = resolve_model(str(tiny_esm_hf))
    embedder = load_esm2_embedder(spec, torch.device("cpu"))
    real_forward = embedder.forward

    def drops_the_last_row(batch):
        out = real_forward(batch)
        return EmbedOutput({k: v[:-1] for k, v in out.pooled.items()}, out.per_token)

    embedder.forward = drops_the_last_row
    config = WorkerConfig(
        0, "cpu", 1, spec, str(tmp_path / "index"), str(tmp_path / "units"), "-", 4096
    )
    runner = UnitRunner(
        config,
        embedder,
        logging.getLogger("t"),
        on_batch=lambda *a: None,
        should_stop=lambda: False,
    )
    with pytest.raises(ValidationError, match="rows for a batch of"):
        runner.run("u0", np.asarray(index.order[:5]))
    embedder.forward = real_forward
    assert len(runner.run("u1", np.asarray(index.order[:5]))) == 5
