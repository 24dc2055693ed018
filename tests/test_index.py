"""The sequence index: one-pass build, cache reuse, order, stride, store reads and errors."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from virnucpro.errors import InputError
from virnucpro.io.fasta import read_records
from virnucpro.io.index import (
    INDEX_DIRNAME,
    FileFingerprint,
    SequenceIndex,
    SkippedRecord,
    build_or_load,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

A_FA = ">a1 first\nACGT\nac\n>a2\nGGGG\n>a_empty\n>a3\nTTTTTT\n"
B_FA = ">b1\nCCCCCC\n>b2\nA\n>b_empty desc\n\n"


@pytest.fixture
def inputs(tmp_path: Path) -> list[Path]:
    a = tmp_path / "a.fa"
    a.write_text(A_FA)
    b = tmp_path / "b.fa.gz"
    b.write_bytes(gzip.compress(B_FA.encode()))
    return [a, b]


def _bump_mtime(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


def _random_fasta(path: Path, n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    records = [
        (f"s{seed}_{i}", "".join(rng.choices("ACGTN", k=rng.randint(1, 120)))) for i in range(n)
    ]
    path.write_text("".join(f">{rid}\n{seq}\n" for rid, seq in records))
    return records


def test_build_contents(inputs: list[Path], tmp_path: Path) -> None:
    index = build_or_load(inputs, tmp_path / "cache")
    assert not index.reused
    assert len(index) == 5
    assert list(index.ids) == ["a1", "a2", "a3", "b1", "b2"]
    assert index.ids[2] == "a3" and index.ids[-1] == "b2"
    assert index.lengths.tolist() == [6, 4, 6, 6, 1]
    assert index.lengths.dtype == np.int64
    assert index.file_index.tolist() == [0, 0, 0, 1, 1]
    assert index.file_index.dtype == np.int32
    assert index.lines.tolist() == [1, 4, 7, 1, 3]
    assert index.sequences(range(5)) == ["ACGTAC", "GGGG", "TTTTTT", "CCCCCC", "A"]
    assert index.total_residues == 23
    assert index.files == [FileFingerprint.of(p) for p in inputs]
    assert all(os.path.isabs(f.path) for f in index.files)
    assert index.skipped == [
        SkippedRecord("a_empty", str(inputs[0]), 6, "empty sequence"),
        SkippedRecord("b_empty", str(inputs[1]), 5, "empty sequence"),
    ]
    assert index.location(2) == "a.fa:7"
    assert index.location(4) == "b.fa.gz:3"
    summary = index.describe()
    assert summary["records"] == 5 and summary["skipped"] == 2
    assert summary["total_residues"] == 23
    assert summary["files"][1]["path"] == str(inputs[1])
    json.dumps(summary)


def test_order_and_stride(inputs: list[Path], tmp_path: Path) -> None:
    index = build_or_load(inputs, tmp_path / "cache")
    assert index.order.tolist() == [0, 2, 3, 1, 4]  # longest first, ties in input order
    assert index.order.dtype == np.int64
    assert index.stride(0, 2).tolist() == [0, 3, 4]
    assert index.stride(1, 2).tolist() == [2, 1]
    assert index.stride(0, 1).tolist() == index.order.tolist()
    for bad in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError):
            index.stride(*bad)


def test_random_positions_read_exact_sequences(tmp_path: Path) -> None:
    records = _random_fasta(tmp_path / "x.fa", 400, seed=1)
    records += _random_fasta(tmp_path / "y.fa", 300, seed=2)
    index = build_or_load([tmp_path / "x.fa", tmp_path / "y.fa"], tmp_path / "cache")
    assert list(index.ids) == [rid for rid, _ in records]
    rng = random.Random(3)
    positions = [rng.randrange(len(records)) for _ in range(200)]
    assert index.sequences(positions) == [records[p][1] for p in positions]
    assert index.sequences(np.array(positions[:5])) == [records[p][1] for p in positions[:5]]
    expected_order = sorted(range(len(records)), key=lambda p: (-len(records[p][1]), p))
    assert index.order.tolist() == expected_order
    world = 3
    strides = [index.stride(r, world) for r in range(world)]
    assert sorted(np.concatenate(strides).tolist()) == list(range(len(records)))
    with pytest.raises(IndexError):
        index.sequence(len(records))


def test_cache_reused_when_nothing_changed(inputs: list[Path], tmp_path: Path) -> None:
    first = build_or_load(inputs, tmp_path / "cache")
    again = build_or_load(inputs, tmp_path / "cache")
    assert again.reused
    assert again.fingerprint() == first.fingerprint()
    assert list(again.ids) == list(first.ids)
    assert again.sequences([4, 0]) == ["A", "ACGTAC"]


def test_touched_but_unchanged_input_reuses_the_cache(inputs: list[Path], tmp_path: Path) -> None:
    # issue 11 item 5: identity by content; the mtime only decides whether to hash the file
    first = build_or_load(inputs, tmp_path / "cache")
    _bump_mtime(inputs[0])
    again = build_or_load(inputs, tmp_path / "cache")
    assert again.reused
    assert again.fingerprint() == first.fingerprint()
    assert again.files[0].mtime_ns == inputs[0].stat().st_mtime_ns  # recorded: no hash next time
    assert build_or_load(inputs, tmp_path / "cache").reused


def test_same_size_content_change_after_touch_rebuilds(inputs: list[Path], tmp_path: Path) -> None:
    first = build_or_load(inputs, tmp_path / "cache")
    text = inputs[0].read_text()
    inputs[0].write_text(text.replace("GGGG", "GGGA"))  # same size, other content
    _bump_mtime(inputs[0])
    again = build_or_load(inputs, tmp_path / "cache")
    assert not again.reused
    assert again.fingerprint() != first.fingerprint()
    assert again.sequence(1) == "GGGA"


def test_rebuilt_after_content_change(inputs: list[Path], tmp_path: Path) -> None:
    build_or_load(inputs, tmp_path / "cache")
    with open(inputs[0], "a") as fh:
        fh.write(">a4\nMKV\n")
    again = build_or_load(inputs, tmp_path / "cache")
    assert not again.reused
    assert list(again.ids)[:4] == ["a1", "a2", "a3", "a4"]
    assert again.sequence(3) == "MKV"


def test_rebuilt_when_file_list_changes(inputs: list[Path], tmp_path: Path) -> None:
    build_or_load(inputs, tmp_path / "cache")
    swapped = build_or_load(inputs[::-1], tmp_path / "cache")
    assert not swapped.reused
    assert list(swapped.ids) == ["b1", "b2", "a1", "a2", "a3"]
    single = build_or_load(inputs[:1], tmp_path / "cache")
    assert not single.reused and len(single) == 3


def test_fingerprint_stable_across_rebuilds(inputs: list[Path], tmp_path: Path) -> None:
    one = build_or_load(inputs, tmp_path / "one")
    two = build_or_load(inputs, tmp_path / "two")
    assert not two.reused
    assert one.fingerprint() == two.fingerprint()
    assert len(one.fingerprint()) == 64


def test_fingerprint_covers_content(tmp_path: Path) -> None:
    path = tmp_path / "x.fa"
    path.write_text(">r\nACGT\n")
    st = path.stat()
    before = build_or_load([path], tmp_path / "c1").fingerprint()
    path.write_text(">r\nACGA\n")  # same size; restore the mtime
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = build_or_load([path], tmp_path / "c2").fingerprint()
    assert before != after


def test_worker_opens_store_in_another_process(inputs: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    build_or_load(inputs, cache)
    code = (
        "import json, sys\n"
        "from virnucpro.io.index import SequenceIndex\n"
        "index = SequenceIndex.open(sys.argv[1])\n"
        "positions = [int(p) for p in index.stride(1, 2)]\n"
        "ids = [index.ids[p] for p in positions]\n"
        "print(json.dumps([positions, index.sequences(positions), ids]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(cache)], check=True, capture_output=True, text=True
    )
    assert json.loads(out.stdout) == [[2, 1], ["TTTTTT", "GGGG"], ["a3", "a2"]]


def test_pickles_by_reopening(inputs: list[Path], tmp_path: Path) -> None:
    index = build_or_load(inputs, tmp_path / "cache")
    blob = pickle.dumps(index)
    assert len(blob) < 500  # the store itself does not travel
    copy = pickle.loads(blob)
    assert copy.sequences([0, 3]) == ["ACGTAC", "CCCCCC"]
    assert copy.fingerprint() == index.fingerprint()


def test_duplicate_ids_name_both_locations(tmp_path: Path) -> None:
    (tmp_path / "x.fa").write_text(">r1\nAC\n>dup desc\nGG\n")
    (tmp_path / "y.fa").write_text(">r2\nAC\n\n>dup\nTT\n")
    with pytest.raises(InputError) as info:
        build_or_load([tmp_path / "x.fa", tmp_path / "y.fa"], tmp_path / "cache")
    message = str(info.value)
    assert message == "duplicate id 'dup' at y.fa:4 (first seen at x.fa:3)"
    assert not (tmp_path / "cache" / INDEX_DIRNAME).exists()


def test_duplicate_id_with_empty_record(tmp_path: Path) -> None:
    (tmp_path / "x.fa").write_text(">r1\n>r2\nAC\n>r1\nGG\n")
    with pytest.raises(InputError, match=r"'r1' at x\.fa:4 \(first seen at x\.fa:1\)"):
        build_or_load([tmp_path / "x.fa"], tmp_path / "cache")


def test_same_file_twice_is_a_duplicate(tmp_path: Path) -> None:
    (tmp_path / "x.fa").write_text(">r1\nAC\n")
    with pytest.raises(InputError, match="duplicate id 'r1'"):
        build_or_load([tmp_path / "x.fa", tmp_path / "x.fa"], tmp_path / "cache")


def test_nothing_to_embed(tmp_path: Path) -> None:
    (tmp_path / "x.fa").write_text(">r1\n\n>r2 empty\n")
    with pytest.raises(InputError) as info:
        build_or_load([tmp_path / "x.fa"], tmp_path / "cache")
    message = str(info.value)
    assert message.startswith("no sequences to process in ")
    assert "x.fa" in message and "2 record(s) with empty sequence" in message


def test_bad_input_errors_pass_through(tmp_path: Path) -> None:
    (tmp_path / "x.fa").write_text(">r1\nAC7\n")
    with pytest.raises(InputError, match="record 'r1' line 2"):
        build_or_load([tmp_path / "x.fa"], tmp_path / "cache")
    with pytest.raises(InputError, match="no such file"):
        build_or_load([tmp_path / "missing.fa"], tmp_path / "cache")
    with pytest.raises(InputError, match="no input files"):
        build_or_load([], tmp_path / "cache")


def test_failed_rebuild_keeps_old_index(inputs: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = build_or_load(inputs, cache)
    with open(inputs[0], "a") as fh:
        fh.write(">bad\nAC\x00\n")
    with pytest.raises(InputError, match="looks binary"):
        build_or_load(inputs, cache)
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [
        INDEX_DIRNAME
    ]
    old = SequenceIndex.open(cache)
    assert old.fingerprint() == first.fingerprint()


def test_damaged_index_is_rebuilt(inputs: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    build_or_load(inputs, cache)
    store = cache / INDEX_DIRNAME / "sequences.bin"
    store.write_bytes(store.read_bytes()[:-3])
    with pytest.raises(InputError, match="damaged"):
        SequenceIndex.open(cache)
    rebuilt = build_or_load(inputs, cache)
    assert not rebuilt.reused
    assert rebuilt.sequence(4) == "A"
    (cache / INDEX_DIRNAME / "meta.json").write_text('{"version": 1, "files": 3}')
    assert not build_or_load(inputs, cache).reused
    (cache / INDEX_DIRNAME / "meta.json").unlink()
    assert not build_or_load(inputs, cache).reused
    assert build_or_load(inputs, cache).reused


def test_open_without_index(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="missing or damaged"):
        SequenceIndex.open(tmp_path)


def test_stale_temp_folder_from_dead_builder_removed(inputs: list[Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = cache / f".{INDEX_DIRNAME}.tmp-{dead.pid}"
    stale.mkdir()
    (stale / "meta.json").write_text("{}")
    build_or_load(inputs, cache)
    assert not stale.exists()


def test_real_protein_file(tmp_path: Path) -> None:
    path = SHARED / "data" / "HG003687.proteins.faa.gz"
    records = list(read_records(path))
    index = build_or_load([path], tmp_path / "cache")
    assert len(index) == 2100
    assert not index.skipped
    assert index.total_residues == sum(len(r.seq) for r in records)
    assert index.lengths[index.order].tolist() == sorted(
        (len(r.seq) for r in records), reverse=True
    )
    longest = int(index.order[0])
    assert index.sequence(longest) == records[longest].seq
    assert index.location(longest) == f"HG003687.proteins.faa.gz:{records[longest].line}"
