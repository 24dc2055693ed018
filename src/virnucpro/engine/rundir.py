"""The layout of an output directory: final files on top, engine state under ``work/``.

OUT/embeddings.h5      the validated output (written last, atomically)
OUT/run.json           machine-readable run report
OUT/missing.tsv        ids not computed because a worker failed (partial runs)
OUT/failed.tsv         ids that could not be computed (poison sequences, out of memory)
OUT/skipped.tsv        records that were not embedded (empty sequences)
OUT/logs/              run.log and one worker_{rank}.log per worker
OUT/work/index/        the sequence index and store of the inputs (cache)
OUT/work/units/        committed unit files
OUT/work/job.json      what this run directory computes (inputs, model, parameters)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def output(self) -> Path:
        return self.root / "embeddings.h5"

    @property
    def report(self) -> Path:
        return self.root / "run.json"

    @property
    def missing(self) -> Path:
        return self.root / "missing.tsv"

    @property
    def failed(self) -> Path:
        return self.root / "failed.tsv"

    @property
    def skipped(self) -> Path:
        return self.root / "skipped.tsv"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def index(self) -> Path:
        return self.work / "index"

    @property
    def units(self) -> Path:
        return self.work / "units"

    @property
    def job(self) -> Path:
        return self.work / "job.json"

    def worker_log(self, rank: int) -> Path:
        return self.logs / f"worker_{rank}.log"

    def create(self) -> RunDir:
        for path in (self.root, self.logs, self.work, self.units):
            path.mkdir(parents=True, exist_ok=True)
        return self
