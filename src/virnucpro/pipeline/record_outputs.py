"""Per-record answers of ``predict``: chunks.tsv, the summary, viral.fna and the viral regions.

One pass over the records table writes the score track, the summary row (the record call) and
the regions of every record; one pass over the input writes the sequences. Every count is
checked: each scored chunk appears once in chunks.tsv, each record once in the summary, each
viral record and region once in its FASTA.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from virnucpro.errors import VirnucproError
from virnucpro.io.atomic import atomic_path
from virnucpro.io.fasta import read_records
from virnucpro.pipeline import tables
from virnucpro.pipeline.record_call import CallRule, RecordCall, call_chunks
from virnucpro.pipeline.regions import (
    REGIONS_BED,
    REGIONS_FNA,
    REGIONS_TSV,
    TSV_HEADER,
    Region,
    find_regions,
)
from virnucpro.pipeline.track import CHUNKS, HEADER, record_track, track_rows

SUMMARY_EXTRA = "viral_fraction\tscore\tconfidence\tviral_regions"


def _extra_columns(call: RecordCall, regions: int) -> str:
    if call.score is None:
        return f"{call.call}\tNA\tNA\tNA\t{regions}"
    return f"{call.call}\t{call.viral_fraction:.4f}\t{call.score:.4f}\t{call.confidence}\t{regions}"


def write_record_outputs(
    input_path: Path,
    out_dir: Path,
    records: Sequence[tuple[str, int, int, int]],
    writer: tables.PredictionWriter,
    frames_scored: dict[str, int],
    chunk_size: int,
    rule: CallRule,
) -> dict[str, int]:
    """Write chunks.tsv, virnucpro_summary.tsv, viral.fna and viral_regions.{tsv,bed,fna}."""
    scores = writer.record_scores()
    calls = {"virus": 0, "others": 0, "no_call": 0}
    viral: set[str] = set()
    regions: dict[str, list[Region]] = {}
    chunk_rows = region_count = 0
    with ExitStack() as stack:
        names = (CHUNKS, tables.SUMMARY, REGIONS_TSV, REGIONS_BED)
        temps = [stack.enter_context(atomic_path(out_dir / n)) for n in names]
        chunks_out, summary, regions_tsv, bed = (
            stack.enter_context(open(t, "w", buffering=1 << 20)) for t in temps
        )
        chunks_out.write(HEADER)
        summary.write(f"{tables.SUMMARY_HEADER}\t{SUMMARY_EXTRA}\n")
        regions_tsv.write(TSV_HEADER)
        for record in records:
            rid, length = record[0], record[1]
            score = scores.get(rid, tables.RecordScore())
            score.frames_scored = frames_scored.get(rid, 0)
            track = record_track(rid, length, chunk_size, writer.chunks, writer.frames)
            rows = list(track_rows(rid, track))
            chunks_out.writelines(rows)
            chunk_rows += len(rows)
            call = call_chunks(track, rule)
            found = find_regions(rid, track, call.call == "virus") if call.viral_chunks else []
            if found:
                regions[rid] = found
                region_count += len(found)
                regions_tsv.writelines(r.tsv_row() for r in found)
                bed.writelines(r.bed_row() for r in found)
            if call.call == "virus":
                viral.add(rid)
            calls[call.call] += 1
            columns = tables.summary_columns(record, score)
            summary.write(f"{columns}\t{_extra_columns(call, len(found))}\n")
    if chunk_rows != len(writer.chunks):
        raise VirnucproError(
            f"internal accounting error: {len(writer.chunks)} scored chunks, {chunk_rows} in "
            f"{CHUNKS} (a chunk id that does not follow the chunking rule?)"
        )
    if sum(calls.values()) != len(records):
        raise VirnucproError("internal accounting error: the summary does not hold every record")
    _write_sequences(input_path, out_dir, viral, regions, region_count)
    return {
        "records_virus": calls["virus"],
        "records_others": calls["others"],
        "records_no_call": calls["no_call"],
        "viral_regions": region_count,
    }


def _write_sequences(
    input_path: Path, out_dir: Path, viral: set[str], regions: dict[str, list[Region]], count: int
) -> None:
    """viral.fna (records called virus, original headers) and viral_regions.fna."""
    records_written = regions_written = 0
    with ExitStack() as stack:
        temps = [stack.enter_context(atomic_path(out_dir / n)) for n in (tables.VIRAL, REGIONS_FNA)]
        viral_out, regions_out = (stack.enter_context(open(t, "w")) for t in temps)
        for record in read_records(input_path):
            if record.id in viral:
                viral_out.write(f">{record.header}\n{record.seq}\n")
                records_written += 1
            for region in regions.get(record.id, ()):
                regions_out.write(
                    f">{region.fasta_id} {region.name}\n{record.seq[region.start : region.end]}\n"
                )
                regions_written += 1
    if records_written != len(viral) or regions_written != count:
        raise VirnucproError(
            f"internal accounting error: {len(viral)} viral records and {count} regions, "
            f"{records_written} and {regions_written} written"
        )
