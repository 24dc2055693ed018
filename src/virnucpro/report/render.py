"""Build ``OUT_DIR/report.html`` from a predict output directory (Jinja2, streamed).

Everything is read from the output files (run.json, virnucpro_summary.tsv,
prediction_results.txt, chunks.tsv, viral_regions.tsv, pairs.tsv, samples.tsv), so
``virnucpro report OUT_DIR`` rebuilds it at any time. Tables are streamed from the files into
the template; figures are drawn only for the top records (``TOP_TRACKS``), embedded as base64
PNG and copied to ``OUT_DIR/plots/`` (file names by rank, never from sequence ids).
"""

from __future__ import annotations

import base64
import csv
import functools
import heapq
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from virnucpro.errors import InputError
from virnucpro.io.atomic import atomic_path
from virnucpro.pipeline import tables
from virnucpro.pipeline.regions import REGIONS_TSV
from virnucpro.pipeline.track import CHUNKS
from virnucpro.report import figures

REPORT = "report.html"
PLOTS = "plots"
TOP_TRACKS = 50
SAMPLES_TSV = "samples.tsv"


@dataclass
class Figure:
    title: str
    data_uri: str
    file: str  # relative to the report's folder


@dataclass
class Section:
    """What the report shows of one predict output directory."""

    name: str
    folder: Path
    run: dict
    calls: Counter = field(default_factory=Counter)
    confidence: Counter = field(default_factory=Counter)
    shown: int = 0  # records in the table (called virus or holding a region)
    figures: list[Figure] = field(default_factory=list)
    tracks: list[Figure] = field(default_factory=list)

    def rows(self) -> Iterator[dict[str, str]]:
        """The table: every record called virus or holding a viral region, in input order."""
        for row in _summary(self.folder):
            if _shown(row):
                yield row


def _summary(folder: Path) -> Iterator[dict[str, str]]:
    with open(folder / tables.SUMMARY, newline="") as f:
        yield from csv.DictReader(f, delimiter="\t")


def _shown(row: dict[str, str]) -> bool:
    return row["call"] == "virus" or row["viral_regions"] not in ("0", "NA")


@functools.lru_cache(maxsize=4 * TOP_TRACKS)
def _histogram_png(counts: tuple[int, ...], title: str, xlabel: str) -> bytes:
    return figures.histogram_png(counts, title, xlabel)


@functools.lru_cache(maxsize=4 * TOP_TRACKS)
def _track_png(rid: str, length: int, chunks: tuple, regions: tuple) -> bytes:
    """Drawn once per process: a samplesheet run shows each sample's tracks in the sample's
    report and again in the combined one."""
    return figures.track_png(rid, length, chunks, regions)


def _bin(value: float) -> int:
    return min(int(value * figures.BINS), figures.BINS - 1)


def _figure(png: bytes, title: str, plots: Path, name: str, base: Path) -> Figure:
    with atomic_path(plots / name) as tmp:
        tmp.write_bytes(png)
    uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return Figure(title, uri, (plots / name).relative_to(base).as_posix())


def _frame_histogram(folder: Path) -> list[int]:
    counts = [0] * figures.BINS
    with open(folder / tables.PREDICTIONS, newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows)
        for row in rows:
            counts[_bin(float(row[3]))] += 1
    return counts


def _chunks_of(folder: Path, wanted: set[str]) -> dict[str, list[tuple[int, int, float, str]]]:
    found: dict[str, list[tuple[int, int, float, str]]] = {r: [] for r in wanted}
    with open(folder / CHUNKS, newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows)
        for row in rows:
            if row[0] in wanted:
                found[row[0]].append((int(row[2]), int(row[3]), float(row[5]), row[7]))
    return found


def _regions_of(folder: Path, wanted: set[str]) -> dict[str, list[tuple[int, int]]]:
    found: dict[str, list[tuple[int, int]]] = {r: [] for r in wanted}
    with open(folder / REGIONS_TSV, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if row["record"] in wanted:
                found[row["record"]].append((int(row["start"]), int(row["end"])))
    return found


def build_section(name: str, folder: Path, base: Path, plots: Path, top: int) -> Section:
    """Read one output directory: counts, histograms, and tracks of its ``top`` records."""
    run_json = folder / "run.json"
    if not run_json.is_file() or not (folder / tables.SUMMARY).is_file():
        raise InputError(f"{folder}: not a finished predict output (no run.json or summary)")
    section = Section(name, folder, json.loads(run_json.read_text()))
    plots.mkdir(parents=True, exist_ok=True)
    record_bins = [0] * figures.BINS
    best: list[tuple[float, int, str, int]] = []  # min-heap of (score, -order, id, length)
    for order, row in enumerate(_summary(folder)):
        section.calls[row["call"]] += 1
        if row["score"] == "NA":
            continue
        score = float(row["score"])
        record_bins[_bin(score)] += 1
        section.confidence[row["confidence"]] += 1
        if _shown(row):
            section.shown += 1
            item = (score, -order, row["id"], int(row["length"]))
            if len(best) < top:
                heapq.heappush(best, item)
            elif item > best[0]:
                heapq.heapreplace(best, item)
    section.figures = [
        _figure(_histogram_png(tuple(_frame_histogram(folder)), "Frames", "P(virus)"),
                "Frame scores (P(virus) of every scored frame)", plots, "frame_scores.png", base),
        _figure(_histogram_png(tuple(record_bins), "Records", "record score"),
                "Record scores", plots, "record_scores.png", base),
    ]  # fmt: skip
    ranked = sorted(best, reverse=True)
    wanted = {rid for _, _, rid, _ in ranked}
    chunks, regions = _chunks_of(folder, wanted), _regions_of(folder, wanted)
    for rank, (score, _, rid, length) in enumerate(ranked, start=1):
        png = _track_png(rid, length, tuple(chunks[rid]), tuple(regions[rid]))
        title = f"#{rank} {rid} (score {score:.4f}, {len(regions[rid])} region(s))"
        section.tracks.append(_figure(png, title, plots, f"track_{rank:03d}.png", base))
    return section


def _samples(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / SAMPLES_TSV, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def write_report(out_dir: Path, top: int = TOP_TRACKS) -> Path:
    """Write ``out_dir/report.html`` (and ``out_dir/plots/``) from the files of a predict run."""
    out_dir = Path(out_dir)
    env = Environment(
        loader=PackageLoader("virnucpro.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    template = env.get_template("report.html.j2")
    plots = out_dir / PLOTS
    if (out_dir / SAMPLES_TSV).is_file():
        samples = _samples(out_dir)
        sections = [
            build_section(
                s["sample"], out_dir / "samples" / s["sample"], out_dir, plots / s["sample"], top
            )  # fmt: skip
            for s in samples
        ]
        run = json.loads((out_dir / "run.json").read_text())
    else:
        samples = []
        sections = [build_section("", out_dir, out_dir, plots, top)]
        run = sections[0].run
    stream = template.generate(run=run, sections=sections, samples=samples, top=top)
    with atomic_path(out_dir / REPORT) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for piece in stream:
            handle.write(piece)
    return out_dir / REPORT
