"""Host work off the critical path (engine/overlap.py): the prefetch thread changes nothing.

The prefetcher is checked on its own (order, errors at the right item, early close), then
the whole engine runs in real worker processes with the overlap forced on and forced off:
the two outputs hold the same ids in the same order and the same vectors, and a poison
sequence is still isolated with the overlap on.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from conftest import embed_args, read_h5, run_cli

from virnucpro.engine.overlap import ENV, Prefetcher, overlap_enabled


@pytest.mark.parametrize("enabled", [True, False])
def test_prefetcher_keeps_order_and_prepares_each_item_once(enabled: bool) -> None:
    calls: list[int] = []
    with Prefetcher(range(50), lambda i: calls.append(i) or i * i, enabled=enabled) as pf:
        got = [(item, get()) for item, get in pf]
    assert got == [(i, i * i) for i in range(50)]
    assert calls == list(range(50))


def test_prefetcher_prepares_ahead_in_a_thread() -> None:
    threads: list[str] = []

    def prepare(i: int) -> int:
        threads.append(threading.current_thread().name)
        return i

    with Prefetcher(range(3), prepare, enabled=True) as pf:
        items = iter(pf)
        first, get = next(items)
        time.sleep(0.2)  # the next item is prepared meanwhile
        assert first == 0 and get() == 0 and len(threads) >= 2
        assert [i for i, _ in items] == [1, 2]
    assert set(threads) == {"virnucpro-prefetch"}


@pytest.mark.parametrize("enabled", [True, False])
def test_prefetcher_raises_at_the_failing_item(enabled: bool) -> None:
    def prepare(i: int) -> int:
        if i == 3:
            raise ValueError("bad item 3")
        return i

    seen = []
    with Prefetcher(range(10), prepare, enabled=enabled) as pf:
        with pytest.raises(ValueError, match="bad item 3"):
            for _item, get in pf:
                seen.append(get())
    assert seen == [0, 1, 2]


def test_prefetcher_close_stops_the_thread_early() -> None:
    pf = Prefetcher(range(10**9), lambda i: i, enabled=True)
    next(iter(pf))
    pf.close()
    assert not pf._thread.is_alive()


def test_overlap_default_is_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    assert not overlap_enabled("cpu") and overlap_enabled("cuda:0")
    monkeypatch.setenv(ENV, "1")
    assert overlap_enabled("cpu")
    monkeypatch.setenv(ENV, "0")
    assert not overlap_enabled("cuda:0")


def test_engine_output_is_the_same_with_the_overlap_on(tmp_path, proteins, tiny_esm_hf):
    outputs = {}
    for flag in ("0", "1"):
        out = tmp_path / f"overlap{flag}"
        result = run_cli(*embed_args(proteins, out, tiny_esm_hf), env={ENV: flag})
        assert result.returncode == 0, result.stderr
        outputs[flag] = read_h5(out / "embeddings.h5")
    (ids_off, off), (ids_on, on) = outputs["0"], outputs["1"]
    assert ids_on == ids_off and len(ids_on) > 0
    np.testing.assert_array_equal(on, off)


def test_poison_sequence_is_isolated_with_the_overlap_on(tmp_path, proteins, tiny_esm_hf):
    from conftest import protein_records

    poison = protein_records()[7][0].split()[0]
    out = tmp_path / "poison"
    env = {ENV: "1", "VIRNUCPRO_TEST_CRASH_ID": poison}
    result = run_cli(*embed_args(proteins, out, tiny_esm_hf, "--max-retries", "2"), env=env)
    assert result.returncode == 2, result.stderr
    failed = (out / "failed.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in failed[1:]] == [poison]
    ids, _ = read_h5(out / "embeddings.h5")
    assert poison not in ids and len(ids) == len(protein_records()) - 1
