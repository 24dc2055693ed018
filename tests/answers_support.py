"""Helpers of the answer-layer tests (track, regions, pairs, samplesheet, report)."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

from conftest import SHARED

GENOME = SHARED / "data" / "GCF_001457455.1_NCTC11397_genomic.fna.gz"
VIRAL_CONTIG = SHARED / "data" / "SRR492066.fna.gz"


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def first_sequence(path: Path) -> str:
    """The first record of a gzipped FASTA, upper-cased."""
    parts: list[str] = []
    with gzip.open(path, "rt") as f:
        assert f.readline().startswith(">")
        for line in f:
            if line.startswith(">"):
                break
            parts.append(line.strip())
    return "".join(parts).upper()
