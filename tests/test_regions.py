"""Viral regions with a classifier that separates two real sequences (GC 30% vs GC 53%).

The classifier is fitted in the test: the tiny random DNABERT-S / ESM-2 models embed windows of
SRR492066 (label virus) and of the NCTC11397 genome (label others), a least-squares linear
separator is fitted on the joined features, and it is written in our safetensors MLP format
with a hidden layer of two units (+z and -z), identity BatchNorm and an output layer that turns
them into the logits (0, z) - so that P(virus) = sigmoid(z).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from answers_support import GENOME, VIRAL_CONTIG, first_sequence, read_tsv
from conftest import predict_args, read_h5, run_cli, write_fasta

C = 500
WINDOWS = 40  # training windows per class
FLANK, INSERT = 15_000, 6_000
SHARPNESS = 4.0  # logits scaled so that the training targets +-1 become +-4


@pytest.fixture(scope="module")
def sequences() -> dict[str, str]:
    return {"genome": first_sequence(GENOME), "viral": first_sequence(VIRAL_CONTIG)}


def fit_classifier(folder: Path, models: dict[str, Path], sequences: dict[str, str]) -> Path:
    """Embed training windows with the tiny models, fit z = w.x + b, write the MLP."""
    from virnucpro.models.classifier import MLPClassifier, save_classifier

    genome, viral = sequences["genome"], sequences["viral"]
    windows = [(f"v{i}", viral[i * C : (i + 1) * C]) for i in range(WINDOWS)]
    windows += [(f"g{i}", genome[200_000 + i * C : 200_000 + (i + 1) * C]) for i in range(WINDOWS)]
    train = write_fasta(folder / "train.fna", windows)
    out = folder / "train_out"
    result = run_cli(*predict_args(train, out, models, "--keep-embeddings"))
    assert result.returncode == 0, result.stderr
    dna_ids, dna = read_h5(out / "stages" / "dnabert_s" / "embeddings.h5")
    esm_ids, esm = read_h5(out / "stages" / "esm2" / "embeddings.h5")
    esm_row = {frame: i for i, frame in enumerate(esm_ids)}
    x = np.stack([np.concatenate([dna[i], esm[esm_row[f]]]) for i, f in enumerate(dna_ids)])
    y = np.array([1.0 if f.startswith("v") else -1.0 for f in dna_ids])
    assert 10 < (y > 0).sum() < len(y) - 10, "both classes need frames"
    design = np.hstack([x, np.ones((len(x), 1))])
    ridge = 1e-3 * np.eye(design.shape[1])
    coef = np.linalg.solve(design.T @ design + ridge, design.T @ y) * SHARPNESS
    w, b = coef[:-1], coef[-1]
    model = MLPClassifier(x.shape[1], hidden=2)
    with torch.no_grad():
        model.hidden_layer.weight.copy_(torch.tensor(np.stack([w, -w]), dtype=torch.float32))
        model.hidden_layer.bias.copy_(torch.tensor([b, -b], dtype=torch.float32))
        model.bn1.weight.fill_(1.0)
        model.bn1.bias.zero_()
        model.bn1.running_mean.zero_()
        model.bn1.running_var.fill_(1.0 - model.bn1.eps)  # BatchNorm is then the identity
        model.output_layer.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
        model.output_layer.bias.zero_()
    return save_classifier(model, folder / "gc_separator.safetensors")


@pytest.fixture(scope="module")
def run(tmp_path_factory, sequences) -> Path:
    from virnucpro.pipeline.selfcheck import write_random_models

    folder = tmp_path_factory.mktemp("regions")
    models = write_random_models(folder / "models")
    classifier = fit_classifier(folder, models, sequences)
    genome, viral = sequences["genome"], sequences["viral"]
    prophage = genome[600_000 : 600_000 + FLANK] + viral[60_000 : 60_000 + INSERT]
    prophage += genome[700_000 : 700_000 + FLANK]
    contigs = write_fasta(
        folder / "contigs.fna",
        [
            ("prophage", prophage),
            ("viral_alone", viral[40_000:52_000]),
            ("genome_alone", genome[1_000_000:1_012_000]),
        ],
    )
    out = folder / "out"
    result = run_cli(*predict_args(contigs, out, {**models, "classifier": classifier}))
    assert result.returncode == 0, result.stderr
    return out


def test_prophage_gives_one_region_inside_the_insert(run):
    summary = {s["id"]: s for s in read_tsv(run / "virnucpro_summary.tsv")}
    regions = [r for r in read_tsv(run / "viral_regions.tsv") if r["record"] == "prophage"]
    assert summary["prophage"]["call"] == "others"
    assert len(regions) == 1, regions
    start, end = int(regions[0]["start"]), int(regions[0]["end"])
    assert FLANK - C <= start and end <= FLANK + INSERT + C, (start, end)
    assert summary["prophage"]["viral_regions"] == "1"
    insert_viral = [
        c
        for c in read_tsv(run / "chunks.tsv")
        if c["record"] == "prophage" and c["call"] == "virus"
        and int(c["start"]) >= FLANK and int(c["end"]) <= FLANK + INSERT
    ]  # fmt: skip
    assert insert_viral, "the classifier calls no chunk of the insert viral"
    for c in insert_viral:
        assert start <= int(c["start"]) and int(c["end"]) <= end, c


def test_viral_contig_is_one_region_and_genome_none(run):
    summary = {s["id"]: s for s in read_tsv(run / "virnucpro_summary.tsv")}
    regions = read_tsv(run / "viral_regions.tsv")
    assert summary["viral_alone"]["call"] == "virus"
    spans = [(r["start"], r["end"]) for r in regions if r["record"] == "viral_alone"]
    assert spans == [("0", summary["viral_alone"]["length"])]
    assert summary["genome_alone"]["call"] == "others"
    assert summary["genome_alone"]["viral_regions"] == "0"
    assert not [r for r in regions if r["record"] == "genome_alone"]


def test_region_files_agree(run, sequences):
    from virnucpro.io.fasta import read_records

    regions = read_tsv(run / "viral_regions.tsv")
    bed = [line.split("\t") for line in (run / "viral_regions.bed").read_text().splitlines()]
    assert [(b[0], int(b[1]), int(b[2]), b[3]) for b in bed] == [
        (r["record"], int(r["start"]), int(r["end"]), r["region"]) for r in regions
    ]
    assert all(0 <= int(b[4]) <= 1000 and b[5] == "." for b in bed)
    inputs = {r.id: r.seq for r in read_records(run / "viral.fna")}
    assert list(inputs) == ["viral_alone"]
    fna = list(read_records(run / "viral_regions.fna"))
    assert [r.id for r in fna] == [f"{r['record']}|{r['start']}-{r['end']}" for r in regions]
    assert fna[-1].seq == inputs["viral_alone"]
