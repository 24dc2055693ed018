"""Paired-end reads: mates matched by order and name, scored as records, one call per pair.

``mates.fna`` interleaves the two files as records ``{pair}/1`` and ``{pair}/2`` (``pair`` is
the mate's id without a trailing ``/1`` or ``/2``; the Illumina comment after the first space
is not part of the id). The pair call applies the record call to the chunks of both mates
together (record_call.py): mates that agree give their call; mates that disagree are decided
by the more confident one, and show as different ``mate1_call`` / ``mate2_call``.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from itertools import groupby, zip_longest
from pathlib import Path

from virnucpro.errors import InputError, VirnucproError
from virnucpro.io.atomic import atomic_path, atomic_write_json
from virnucpro.io.fasta import read_records
from virnucpro.io.paths import require_input_files
from virnucpro.pipeline import tables
from virnucpro.pipeline.predict import PredictOptions, PredictResult, run_predict
from virnucpro.pipeline.record_call import CallRule, call_chunks
from virnucpro.pipeline.track import CHUNKS, Chunk

PAIRS = "pairs.tsv"
MATES = "mates.fna"
HEADER = "pair\tmate1_call\tmate2_call\tmate1_score\tmate2_score\tcall\tscore\n"


def pair_name(record_id: str) -> str:
    """The pair's name: the id without a trailing ``/1`` or ``/2``."""
    return record_id[:-2] if record_id.endswith(("/1", "/2")) else record_id


def write_mates(r1: Path, r2: Path, stage: Path) -> tuple[Path, int]:
    """Interleave the mates of ``r1`` and ``r2`` into ``stage/mates.fna``; returns (path, pairs).

    Reused while both inputs keep their size and mtime. A name mismatch or unequal counts is an
    InputError naming the first discordant pair; nothing is written then.
    """
    key = {str(p.resolve()): [p.stat().st_size, p.stat().st_mtime_ns] for p in (Path(r1), Path(r2))}
    key["order"] = [str(Path(r1).resolve()), str(Path(r2).resolve())]
    marker, path = stage / "mates.json", stage / MATES
    if marker.exists() and path.exists():
        saved = json.loads(marker.read_text())
        if saved.get("key") == key:
            return path, saved["pairs"]
    stage.mkdir(parents=True, exist_ok=True)
    pairs = 0
    with atomic_path(path) as tmp, open(tmp, "w", buffering=1 << 20) as out:
        for mate1, mate2 in zip_longest(read_records(r1), read_records(r2)):
            if mate1 is None or mate2 is None:
                short, other, extra = (r1, r2, mate2) if mate1 is None else (r2, r1, mate1)
                raise InputError(
                    f"{short}: ends after {pairs} records but {other} goes on: pair {pairs + 1} "
                    f"({extra.id!r}, line {extra.line}) has no mate"
                )
            pairs += 1
            name = pair_name(mate1.id)
            if pair_name(mate2.id) != name:
                raise InputError(
                    f"{r1}:{mate1.line} and {r2}:{mate2.line}: pair {pairs} has mates "
                    f"{mate1.id!r} and {mate2.id!r}, whose names differ"
                )
            out.write(f">{name}/1\n{mate1.seq}\n>{name}/2\n{mate2.seq}\n")
    atomic_write_json(marker, {"key": key, "pairs": pairs})
    return path, pairs


def _tracks(out_dir: Path) -> Iterator[tuple[str, list[Chunk]]]:
    """(record, scored chunks) from chunks.tsv, record by record in file order."""
    with open(out_dir / CHUNKS) as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows)
        for record, group in groupby(rows, key=lambda r: r[0]):
            yield (
                record,
                [
                    Chunk(int(r[1]), int(r[2]), int(r[3]), int(r[4]), float(r[5]), float(r[6]))
                    for r in group
                ],
            )


def write_pairs_table(out_dir: Path, pairs: int, rule: CallRule) -> dict[str, int]:
    """``pairs.tsv`` from the summary and chunks.tsv of a paired run; returns pair counts."""
    counts = {"pairs": 0, "pairs_virus": 0, "pairs_others": 0, "pairs_no_call": 0}
    counts["pairs_discordant"] = 0
    tracks = _tracks(out_dir)
    pending = next(tracks, None)
    with (
        open(out_dir / tables.SUMMARY) as f,
        atomic_path(out_dir / PAIRS) as tmp,
        open(tmp, "w", buffering=1 << 20) as out,
    ):
        out.write(HEADER)
        rows = csv.DictReader(f, delimiter="\t")
        for mate1, mate2 in zip_longest(rows, rows):
            if mate2 is None or not (mate1["id"].endswith("/1") and mate2["id"].endswith("/2")):
                raise VirnucproError(f"internal error: {tables.SUMMARY} is not in mate order")
            chunks: list[Chunk] = []
            for mate in (mate1, mate2):
                if pending is not None and pending[0] == mate["id"]:
                    chunks += pending[1]
                    pending = next(tracks, None)
            call = call_chunks(chunks, rule)
            score = "NA" if call.score is None else f"{call.score:.4f}"
            out.write(
                f"{pair_name(mate1['id'])}\t{mate1['call']}\t{mate2['call']}\t"
                f"{mate1['score']}\t{mate2['score']}\t{call.call}\t{score}\n"
            )
            counts["pairs"] += 1
            counts[f"pairs_{call.call}"] += 1
            scored = "no_call" not in (mate1["call"], mate2["call"])
            counts["pairs_discordant"] += int(scored and mate1["call"] != mate2["call"])
    if counts["pairs"] != pairs or pending is not None:
        raise VirnucproError(
            f"internal accounting error: {pairs} pairs read, {counts['pairs']} in {PAIRS}"
        )
    return counts


def add_pair_counts(out_dir: Path, counts: dict[str, int]) -> None:
    """Add the pair counts to ``run.json``'s counts."""
    report = json.loads((out_dir / "run.json").read_text())
    report["counts"].update(counts)
    report["paired"] = True
    atomic_write_json(out_dir / "run.json", report)


def run_paired(r1: Path, r2: Path, out_dir: Path, options: PredictOptions) -> PredictResult:
    """``predict R1 R2 --paired``: the mates as records, then ``pairs.tsv`` and the report."""
    from virnucpro.pipeline.cleanup import DiskPeak, completion_key, finish
    from virnucpro.report.render import write_report

    r1, r2, out_dir = Path(r1), Path(r2), Path(out_dir)
    require_input_files([r1, r2])
    created = not out_dir.exists()
    disk = DiskPeak(out_dir)
    try:
        mates, pairs = write_mates(r1, r2, out_dir / "stages" / "pairs")
    except InputError:
        if created:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    result = run_predict(mates, out_dir, options, report=False)
    if "shard" in result.counts:
        return result
    counts = write_pairs_table(out_dir, pairs, options.call_rule)
    add_pair_counts(out_dir, counts)
    result.counts.update(counts)
    write_report(out_dir)
    key = completion_key([r1, r2], options, {"paired": True})
    finish(out_dir, key, disk, keep_work=bool(options.engine.get("keep_work")),
           keep_embeddings=options.keep_embeddings)  # fmt: skip
    return result
