"""chunks.tsv: chunk coordinates from the chunking rule and each scored chunk exactly once."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from answers_support import GENOME, first_sequence, read_tsv
from conftest import predict_args, run_cli, write_fasta

from virnucpro.pipeline.chunking import chunk_bounds
from virnucpro.pipeline.track import chunk_spans

C = 500
LENGTHS = {"len1": 1, "len499": C - 1, "len500": C, "len501": C + 1, "len1001": 2 * C + 1}
LENGTHS |= {"len600": 600, "long7777": 7777, "long20011": 20011}


@pytest.mark.parametrize("n", [*LENGTHS.values(), 0, 2, 999, 1000, 1499, 123_457, 2_463_511])
def test_spans_equal_the_reference_chunking_rule(n):
    assert chunk_spans(n, C) == chunk_bounds(n, C)


def test_spans_keep_the_overlap_quirk():
    assert chunk_spans(600, C) == [(0, 500), (299, 600)]
    assert chunk_spans(1001, C)[-1] == (666, 1001)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from virnucpro.pipeline.selfcheck import write_random_models

    return write_random_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, models) -> Path:
    genome = first_sequence(GENOME)
    records, offset = [], 10_000
    for name, n in LENGTHS.items():
        records.append((name, genome[offset : offset + n]))
        offset += n + 137
    inputs = write_fasta(tmp_path_factory.mktemp("in") / "lengths.fna", records)
    out = tmp_path_factory.mktemp("track") / "out"
    result = run_cli(*predict_args(inputs, out, models))
    assert result.returncode == 0, result.stderr
    return out


def test_chunk_coordinates_follow_the_chunking_rule(run):
    rows = read_tsv(run / "chunks.tsv")
    assert list(rows[0]) == [
        "record", "chunk", "start", "end", "frames_scored", "virus_score", "others_score", "call",
    ]  # fmt: skip
    assert {r["record"] for r in rows} >= {"long7777", "long20011", "len1001"}
    for r in rows:
        spans = chunk_bounds(LENGTHS[r["record"]], C)
        assert (int(r["start"]), int(r["end"])) == spans[int(r["chunk"]) - 1], r


def test_every_scored_chunk_appears_once_with_its_frame_maxima(run):
    frames = defaultdict(list)
    for p in read_tsv(run / "prediction_results.txt"):
        frames[p["Sequence_ID"][:-2]].append((float(p["score1"]), float(p["score2"])))
    rows = read_tsv(run / "chunks.tsv")
    ids = [f"{r['record']}_chunk_{r['chunk']}" for r in rows]
    assert sorted(ids) == sorted(frames) and len(set(ids)) == len(ids)
    for r, chunk in zip(rows, ids, strict=True):
        others = max(o for o, _ in frames[chunk])
        virus = max(v for _, v in frames[chunk])
        assert int(r["frames_scored"]) == len(frames[chunk])
        assert (float(r["others_score"]), float(r["virus_score"])) == (others, virus)
        assert r["call"] == ("virus" if virus >= others else "others")


def test_summary_keeps_its_columns_and_adds_the_record_call(run):
    summary = read_tsv(run / "virnucpro_summary.tsv")
    assert list(summary[0]) == [
        "id", "length", "chunks", "frames_kept", "frames_scored", "viral_chunks",
        "best_virus_score", "call", "viral_fraction", "score", "confidence", "viral_regions",
    ]  # fmt: skip
    assert [s["id"] for s in summary] == list(LENGTHS)
    chunks = defaultdict(list)
    for r in read_tsv(run / "chunks.tsv"):
        chunks[r["record"]].append(r)
    for s in summary:
        scored = chunks[s["id"]]
        if not scored:
            assert (s["call"], s["score"], s["viral_fraction"]) == ("no_call", "NA", "NA")
            continue
        viral = sum(r["call"] == "virus" for r in scored)
        assert float(s["viral_fraction"]) == pytest.approx(viral / len(scored), abs=1e-4)
        assert 0.0 <= float(s["score"]) <= 1.0 and s["confidence"] in {"high", "medium", "low"}
        if len(scored) == 1:  # a read keeps its chunk's call
            assert s["call"] == scored[0]["call"]
