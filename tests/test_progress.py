"""Progress in batch logs: plain lines on a non-terminal stderr, ETA from the tokens left."""

from __future__ import annotations

import io
import random
import re

import numpy as np
import pytest
from conftest import AMINO, embed_args, run_cli, write_fasta

from virnucpro.engine import progress as progress_module
from virnucpro.engine.progress import Progress
from virnucpro.engine.units import Unit

LINE = re.compile(
    r"^\[\d\d:\d\d:\d\d UTC\] embedding: (?:done: )?(\d+)% \| (\d+)/300 sequences \| "
    r"([\d,]+)/([\d,]+) tokens \| (?:[\d,]+|\?) tokens/s \| elapsed \d+:\d\d:\d\d \| "
    r"ETA (\d+:\d\d:\d\d|\?) \| \d worker\(s\)$"
)


@pytest.fixture(scope="module")
def three_hundred(tmp_path_factory):
    rng = random.Random(5)
    records = [
        (f"s{i:03d}", "".join(rng.choice(AMINO) for _ in range(rng.choice([8, 40, 120, 200]))))
        for i in range(300)
    ]
    return write_fasta(tmp_path_factory.mktemp("progress") / "proteins.fa", records)


def _loud(args: list[str]) -> list[str]:
    return [a for a in args if a != "--quiet"]


def test_a_batch_log_gets_periodic_progress_lines_with_an_eta(tmp_path, three_hundred, tiny_esm_hf):
    """stderr is a pipe here (as in a Slurm log): one line per 5% of the tokens, and -v says
    which stage runs."""
    args = _loud(embed_args(three_hundred, tmp_path / "out", tiny_esm_hf, "-v", unit_tokens=2048))
    args[args.index("--tokens-per-batch") + 1] = "1024"  # about 30 batches
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr  # no bar drawing
    lines = result.stderr.splitlines()
    assert any(line.startswith("INFO: stage embedding: 300 sequences") for line in lines)
    start = [line for line in lines if "tokens to compute (a line every 5% or 30 s)" in line]
    assert len(start) == 1 and "300 sequences" in start[0]
    progress = [LINE.match(line) for line in lines if LINE.match(line)]
    assert len(progress) >= 10, result.stderr  # a line per 5% (batches are ~3.5%)
    percents = [int(m.group(1)) for m in progress]
    tokens = [int(m.group(3).replace(",", "")) for m in progress]
    assert percents == sorted(percents) and tokens == sorted(tokens)
    steps = zip(percents[:-2], percents[1:-1], strict=True)  # the closing line comes anyway
    assert all(b - a >= 4 for a, b in steps)  # 5% apart (rounded)
    assert all(m.group(5) != "?" for m in progress[1:])  # an ETA once a rate is known
    last = progress[-1]
    assert last.group(0).split("] embedding: ")[1].startswith("done: 100% | 300/300")
    assert last.group(3) == last.group(4)  # every planned token credited
    total = int(last.group(4).replace(",", ""))
    assert total == sum(min(len(s), 1022) + 2 for s in _sequences(three_hundred))


def _sequences(path) -> list[str]:
    from virnucpro.io.fasta import read_records

    return [r.seq for r in read_records(path)]


def test_the_time_rule_writes_lines_while_a_batch_runs(tmp_path, proteins, tiny_esm_hf):
    """VIRNUCPRO_PROGRESS_SECONDS (30 by default) also writes a line when no batch ends."""
    args = _loud(embed_args(proteins, tmp_path / "out", tiny_esm_hf, unit_tokens=100000))
    args[args.index("--tokens-per-batch") + 1] = "100000"  # one batch, one unit
    env = {"VIRNUCPRO_PROGRESS_SECONDS": "0.3", "VIRNUCPRO_TEST_DELAY": "3"}
    result = run_cli(*args, env=env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "| 0/40 sequences |" in line]
    assert len(lines) >= 3, result.stderr  # written while the single batch sleeps
    assert all("ETA ?" in line for line in lines)  # nothing done yet: no rate, no guess
    assert "done: 100% | 40/40 sequences" in result.stderr


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_eta_comes_from_the_tokens_left_not_the_sequence_count(monkeypatch):
    """Longest first: the first unit is 1 long sequence, the second 99 short ones of the same
    token count. After the first, half the work is done: the ETA is one unit's time, where the
    sequence count (1 of 100 done) would say 99 units' time."""
    clock = _Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    long = Unit("u000000", np.arange(1), 10_000)
    short = Unit("u000001", np.arange(1, 100), 10_000)
    out = io.StringIO()  # not a terminal: lines
    bar = Progress(100, desc="embedding", tokens=20_000, stream=out)
    clock.now += 5.0  # model loading: not part of the rate
    bar.update(1, 5_000, 1, unit=long)
    clock.now += 10.0
    bar.update(0, 5_000, 1, unit=long)
    bar.unit_done(long)
    assert bar.fraction == 0.5 and bar.sequences == 1
    assert bar.rate() == pytest.approx(500.0)  # 5,000 planned tokens in the 10 s measured
    assert bar.eta() == pytest.approx(20.0)  # 10,000 tokens left at 500 tokens/s
    bar.update(99, 12_000, 1, unit=short)  # real tokens above the plan are not over-credited
    bar.unit_done(short)
    assert bar.done_tokens == 20_000 and bar.sequences == 100 and bar.eta() == 0
    bar.close()
    assert out.getvalue().splitlines()[-1].split("] embedding: ")[1].startswith("done: 100%")


def test_retried_units_are_not_counted_twice(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", clock)
    unit = Unit("u000000", np.arange(10), 1_000)
    bar = Progress(10, desc="x", tokens=1_000, stream=io.StringIO())
    bar.update(5, 500, 1, unit=unit)  # the worker dies here; the unit is retried
    bar.update(5, 500, 1, unit=unit)
    bar.update(5, 500, 1, unit=unit)
    bar.unit_done(unit)
    assert (bar.sequences, bar.done_tokens, bar.fraction) == (10, 1_000, 1.0)


def test_quiet_and_the_period_variable(monkeypatch):
    out = io.StringIO()
    Progress(10, desc="x", tokens=100, quiet=True, stream=out).close()
    assert out.getvalue() == ""
    monkeypatch.setenv("VIRNUCPRO_PROGRESS_SECONDS", "2.5")
    assert progress_module.progress_period() == 2.5
    for bad in ("", "abc", "-1", "0"):
        monkeypatch.setenv("VIRNUCPRO_PROGRESS_SECONDS", bad)
        assert progress_module.progress_period() == 30.0
