"""``predict``'s disk: what a complete run removes, its peak disk use, and the completion mark.

A complete predict run keeps its answers (tables, FASTA, report, run.json, logs) and removes
its stage intermediates: the translate stage (chunked copy of the input, identified
nucleotide and protein FASTA, records.tsv), the mates file of a paired run, the combined
FASTA of a samplesheet run, and each embedding stage's ``work/`` folder (index, unit files);
the two stage ``embeddings.h5`` are kept only with ``--keep-embeddings``, everything with
``--keep-work``. An incomplete run (exit 2, an interruption, an error) keeps everything, so it
resumes. ``stages/complete.json`` records what the complete run was computed from: the same
command on the same inputs then returns at once instead of recomputing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from virnucpro._version import __version__
from virnucpro.engine.merge import disk_bytes
from virnucpro.io.atomic import atomic_write_json

COMPLETE = "complete.json"
EMBED_STAGES = ("dnabert_s", "esm2")


def completion_key(inputs: list[Path], options, models: dict) -> dict:
    """What a complete run's answers depend on (inputs as path, size, mtime; models by
    checksum; the parameters that change a number or a call)."""
    files = []
    for path in inputs:
        st = Path(path).stat()
        files.append([str(Path(path).resolve()), st.st_size, st.st_mtime_ns])
    return {
        "inputs": files,
        "chunk_size": options.chunk_size,
        "precision": options.precision,
        "call_rule": [options.call_rule.threshold, options.call_rule.min_viral_fraction],
        "models": models,
        "version": __version__,
    }


def previous_result(out_dir: Path, key: dict) -> dict | None:
    """run.json of a complete run of this exact key whose answers are all still there."""
    marker = Path(out_dir) / "stages" / COMPLETE
    run_json = Path(out_dir) / "run.json"
    try:
        if json.loads(marker.read_text()).get("key") != key:
            return None
        report = json.loads(run_json.read_text())
    except (OSError, ValueError):
        return None
    answers = ("virnucpro_summary.tsv", "prediction_results.txt", "report.html")
    if report.get("status") != "complete" or not all((out_dir / a).is_file() for a in answers):
        return None
    return report


class DiskPeak:
    """Peak disk use of a predict output directory: sampled between stages, plus each
    embedding stage's own peak (measured by the engine during its merge)."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.peak = disk_bytes(self.out_dir)

    def sample(self) -> int:
        now = disk_bytes(self.out_dir)
        self.peak = max(self.peak, now)
        return now

    def stage(self, before_total: int, before_stage: int, result) -> None:
        """After one engine stage: the directory's size before it, minus the stage folder's
        size before it, plus the stage's peak."""
        stage_peak = int((result.report or {}).get("disk", {}).get("peak_bytes", 0))
        self.peak = max(self.peak, before_total - before_stage + stage_peak)
        self.sample()


def intermediates(out_dir: Path, keep_embeddings: bool) -> list[Path]:
    """Every intermediate a complete run removes (see the module docstring)."""
    stages = [Path(out_dir) / "stages"]
    stages += sorted((Path(out_dir) / "samples").glob("*/stages"))
    found: list[Path] = []
    for folder in stages:
        found += [folder / name for name in ("translate", "pairs", "combined")]
        for name in EMBED_STAGES:
            found += [folder / name / "work" / "index", folder / name / "work" / "units"]
            found += [folder / name / "work" / "merge"]
            if not keep_embeddings:
                found.append(folder / name / "embeddings.h5")
    return [p for p in found if p.exists()]


def finish(out_dir: Path, key: dict, peak: DiskPeak, *, keep_work: bool,
           keep_embeddings: bool) -> dict:  # fmt: skip
    """After the last answer is written: a complete run (run.json status) removes its
    intermediates and is marked complete; every run records its disk use in run.json."""
    out_dir = Path(out_dir)
    peak.sample()
    report = json.loads((out_dir / "run.json").read_text())
    peak.peak = max(peak.peak, int(report.get("disk", {}).get("peak_bytes", 0)))
    complete = report.get("status") == "complete"
    if complete and not keep_work:
        for path in intermediates(out_dir, keep_embeddings):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    report["disk"] = {"peak_bytes": peak.peak, "final_bytes": disk_bytes(out_dir)}
    atomic_write_json(out_dir / "run.json", report)
    marker = out_dir / "stages" / COMPLETE
    if complete:
        atomic_write_json(marker, {"key": key})
    else:
        marker.unlink(missing_ok=True)
    return report
