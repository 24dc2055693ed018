"""make-dataset (issue 9, part 1): the training rule on real genomes, balance, split, errors.

The GenBank input is built with Biopython from slices of the real C. diphtheriae genome, with
a CDS feature (and /translation) for every open reading frame of >= 80 codons on both strands,
and a few ambiguous bases inserted. The expected frames come from a direct implementation of
the rule written here (Biopython's codon table, SPEC 1.1 arithmetic, ``in`` on every
translation), independent of the vectorised code under test.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections import Counter
from functools import cache
from pathlib import Path

import pytest
from Bio import SeqIO
from Bio.Data.CodonTable import unambiguous_dna_by_id
from Bio.Seq import Seq
from Bio.SeqFeature import FeatureLocation, SeqFeature
from Bio.SeqRecord import SeqRecord
from conftest import SHARED, run_cli, write_fasta

from virnucpro.io.fasta import read_records
from virnucpro.pipeline.chunking import chunk_bounds, six_frames

GENOME = SHARED / "data" / "GCF_001457455.1_NCTC11397_genomic.fna.gz"
CONTIG = SHARED / "data" / "SRR492066.fna.gz"
C = 300
_TABLE = unambiguous_dna_by_id[1]
CODONS = {**_TABLE.forward_table, **{s: "*" for s in _TABLE.stop_codons}}
COMPLEMENT = str.maketrans("ACGT", "TGCA")
AMBIGUOUS = "NRYMKSWHBVD"


@cache
def genome() -> str:
    return next(read_records(GENOME)).seq


@cache
def contig() -> str:
    return next(read_records(CONTIG)).seq


def revcomp(s: str) -> str:
    return s.translate(COMPLEMENT)[::-1]


def protein(strand: str, offset: int) -> str:
    return "".join(CODONS.get(strand[i : i + 3], "") for i in range(offset, len(strand) - 2, 3))


def orfs(seq: str, min_codons: int = 80) -> list[tuple[int, int, int, str]]:
    """(start, end, strand, translation) of every ATG..stop ORF on both strands."""
    found = []
    n = len(seq)
    for strand, s in ((1, seq), (-1, revcomp(seq))):
        for frame in range(3):
            aa = protein(s, frame)
            pos = 0
            for piece in aa.split("*")[:-1]:  # only ORFs closed by a stop
                m = piece.find("M")
                if m >= 0 and len(piece) - m >= min_codons:
                    a = frame + 3 * (pos + m)
                    b = frame + 3 * (pos + len(piece) + 1)  # through the stop codon
                    start, end = (a, b) if strand == 1 else (n - b, n - a)
                    found.append((start, end, strand, piece[m:]))
                pos += len(piece) + 1
    return found


def genbank_record(rec_id: str, seq: str, annotate: bool = True) -> SeqRecord:
    rec = SeqRecord(Seq(seq), id=rec_id, name=rec_id, description=f"slice {rec_id}")
    rec.annotations["molecule_type"] = "DNA"
    if annotate:
        for start, end, strand, aa in orfs(seq.upper()):
            loc = FeatureLocation(start, end, strand=strand)
            rec.features.append(SeqFeature(loc, type="CDS", qualifiers={"translation": [aa]}))
    return rec


def with_ambiguity(seq: str, positions: dict[int, str]) -> str:
    chars = list(seq)
    for pos, base in positions.items():
        chars[pos] = base
    return "".join(chars)


def write_genbank(path: Path, records: list[SeqRecord]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt") as handle:
        SeqIO.write(records, handle, "genbank")
    return path


def expected_frames(rec: SeqRecord, c: int, cds: bool) -> list[tuple[str, str, str]]:
    """The rule, directly: (id, protein, nucleotide) in chunk then frame order."""
    seq = str(rec.seq).upper()
    translations = [f.qualifiers["translation"][0] for f in rec.features if f.type == "CDS"]
    n = len(seq)
    k = math.ceil(n / c)
    r = k * c - n
    lo = r // k
    m = r - lo * (k - 1)
    steps = [lo + 1] * m + [lo] * (k - 1 - m) + [0]
    out = []
    for i in range(k):
        start = i * c - sum(steps[:i])
        chunk = seq[start : start + c]
        if any(b in chunk for b in AMBIGUOUS):
            continue
        for name, strand in (("F", chunk), ("R", revcomp(chunk))):
            for offset in range(3):
                aa = protein(strand, offset)
                if not aa or "*" in aa:
                    continue
                if cds and not any(aa in t for t in translations):
                    continue
                nt = strand[offset : offset + 3 * len(aa) + 1]
                out.append((f"{rec.id}_chunk_{i + 1}{name}{offset + 1}", aa, nt))
    return out


def read_pairs(path: Path) -> list[tuple[str, str]]:
    return [(r.id, r.seq) for r in read_records(path)]


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def make(*args: str) -> tuple[int, str]:
    proc = run_cli("make-dataset", *args, "--quiet", timeout=120)
    return proc.returncode, proc.stderr


@pytest.fixture(scope="module")
def viral_records() -> list[SeqRecord]:
    g = genome()
    a = with_ambiguity(g[100_000:140_000], {1_000: "N", 7_777: "R", 20_050: "y", 33_333: "K"})
    b = g[900_000:925_000].lower()
    small = [genbank_record(f"SMALL_{i}.1", g[300_000 + 9_000 * i :][:8_000]) for i in range(5)]
    return [
        genbank_record("SLICE_A.1", a),
        genbank_record("SLICE_B.1", b),
        genbank_record("NO_CDS.1", g[1_500_000:1_505_000], annotate=False),
        *small,
    ]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, viral_records) -> dict[str, Path]:
    """viral: a gzipped GenBank file; other: two FASTA groups larger than the viral class."""
    d = tmp_path_factory.mktemp("md_inputs")
    g, s = genome(), contig()
    other_a = [(f"GEN_{i}", g[2_000_000 + 4_000 * i : 2_004_000 + 4_000 * i]) for i in range(40)]
    other_b = [(f"CTG_{i}", s[5_000 * i : 5_000 * i + 5_000]) for i in range(14)]
    other_b.append(("CTG_empty", ""))
    return {
        "viral": write_genbank(d / "viral.gbff.gz", viral_records),
        "other_a": write_fasta(d / "other_a.fa", other_a),
        "other_b": write_fasta(d / "other_b.fna", other_b),
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, inputs) -> Path:
    out = tmp_path_factory.mktemp("md_out") / "data"
    rc, err = make(
        "--viral", str(inputs["viral"]),
        "--other", str(inputs["other_a"]), str(inputs["other_b"]),
        "-o", str(out), "--chunk-size", str(C), "--seed", "7",
    )  # fmt: skip
    assert rc == 0, err
    return out


def test_genbank_frames_follow_the_original_rule(dataset: Path, viral_records) -> None:
    expected = [f for rec in viral_records for f in expected_frames(rec, C, cds=True)]
    assert len(expected) > 100
    names = Counter(fid[-2] for fid, _, _ in expected)
    assert names["F"] > 10 and names["R"] > 10  # the CDS rule is exercised on both strands
    table = read_table(dataset / "dataset.tsv")
    viral_ids = [row["id"] for row in table if row["label"] == "viral"]
    nt = dict(read_pairs(dataset / "frames_nucleotide.fa"))
    aa = dict(read_pairs(dataset / "frames_protein.faa"))
    got = [(fid, aa[fid], nt[fid]) for fid in viral_ids]
    assert got == expected  # every viral frame is kept (the other class is larger), in order
    # The CDS rule dropped stop-free frames that a FASTA input would keep, the ambiguity rule
    # whole chunks; and each nucleotide is the 3P+1 slice.
    all_free = [f for rec in viral_records for f in expected_frames(rec, C, cds=False)]
    assert len(all_free) > len(expected)
    assert all(len(n) == min(3 * len(p) + 1, C - int(i[-1]) + 1) for i, p, n in got)
    skipped = read_table(dataset / "skipped.tsv")
    ambiguous = {r["id"]: r["reason"] for r in skipped if r["reason"].startswith("ambiguous")}
    assert len(ambiguous) >= 4 and "ambiguous base(s) Y" in ambiguous.values()
    assert {r["id"]: r["reason"] for r in skipped if r["level"] == "record"}["NO_CDS.1"] == (
        "no CDS /translation in the GenBank record"
    )


def test_fasta_input_keeps_every_stop_free_frame(dataset: Path, inputs) -> None:
    table = read_table(dataset / "dataset.tsv")
    chosen = {row["id"] for row in table if row["source"] == str(inputs["other_a"])}
    aa = dict(read_pairs(dataset / "frames_protein.faa"))
    every = {}
    for rec in read_records(inputs["other_a"]):
        for i, (start, end) in enumerate(chunk_bounds(len(rec.seq), C), 1):
            for fid, protein_seq, _ in six_frames(f"{rec.id}_chunk_{i}", rec.seq[start:end]):
                every[fid] = protein_seq
    description = json.loads((dataset / "dataset.json").read_text())
    entry = next(i for i in description["inputs"] if i["source"] == str(inputs["other_a"]))
    assert entry["candidate_frames"] == len(every)  # all stop-free frames were candidates
    assert chosen <= set(every) and all(aa[f] == every[f] for f in chosen)


def test_balance_and_group_proportions(dataset: Path, inputs) -> None:
    d = json.loads((dataset / "dataset.json").read_text())
    cand = d["counts"]["candidate_frames"]
    n = min(cand["viral"], cand["other"])
    assert d["frames_per_class"] == n and d["counts"]["by_label"]["viral"]["total"] == n
    table = read_table(dataset / "dataset.tsv")
    assert Counter(r["label"] for r in table) == {"viral": n, "other": n}
    groups = {g["group"]: g for g in d["counts"]["by_group"] if g["label"] == "other"}
    per_group = Counter(r["group"] for r in table if r["label"] == "other")
    for name, g in groups.items():
        share = n * g["candidate_frames"] / cand["other"]
        assert math.floor(share) <= per_group[name] <= math.ceil(share)
        assert g["total"] == per_group[name]
    assert sum(per_group.values()) == n and len(per_group) == 2


def test_split_by_record_and_every_record_accounted_for(dataset: Path, inputs) -> None:
    table = read_table(dataset / "dataset.tsv")
    sides: dict[str, set[str]] = {}
    for row in table:
        sides.setdefault(row["record"], set()).add(row["split"])
        assert row["id"].startswith(row["record"] + "_chunk_")
    assert all(len(s) == 1 for s in sides.values())  # no record on both sides
    for label in ("viral", "other"):
        rows = [r for r in table if r["label"] == label]
        held = sum(r["split"] == "validation" for r in rows)
        assert 0 < held < len(rows)
    all_records = [r.id for key in ("other_a", "other_b") for r in read_records(inputs[key])]
    all_records += [r.id for r in SeqIO.parse(gzip.open(inputs["viral"], "rt"), "genbank")]
    skipped = {r["id"] for r in read_table(dataset / "skipped.tsv") if r["level"] == "record"}
    assert not skipped & set(sides)
    assert sorted(skipped | set(sides)) == sorted(all_records)
    d = json.loads((dataset / "dataset.json").read_text())
    assert d["counts"]["records"] == len(all_records)
    assert d["fingerprint"] and d["chunk_size"] == C and d["seed"] == 7


def test_same_seed_same_dataset_and_other_seed_differs(
    tmp_path: Path, dataset: Path, inputs
) -> None:
    common = ["--viral", str(inputs["viral"]), "--other", str(inputs["other_a"]),
              str(inputs["other_b"]), "--chunk-size", str(C)]  # fmt: skip
    rc, err = make(*common, "-o", str(tmp_path / "same"), "--seed", "7")
    assert rc == 0, err
    for name in ("dataset.tsv", "frames_nucleotide.fa", "frames_protein.faa", "dataset.json"):
        assert (tmp_path / "same" / name).read_bytes() == (dataset / name).read_bytes()
    rc, err = make(*common, "-o", str(tmp_path / "other"), "--seed", "8")
    assert rc == 0, err
    assert (tmp_path / "other" / "dataset.tsv").read_bytes() != (
        dataset / "dataset.tsv"
    ).read_bytes()


# --- bad inputs: one line, exit 1, no DATA_DIR ------------------------------------------


def assert_refused(rc: int, err: str, out: Path, *words: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


@pytest.fixture(scope="module")
def small_other(tmp_path_factory) -> Path:
    g = genome()
    records = [(f"O_{i}", g[1_000_000 + 3_000 * i :][:3_000]) for i in range(30)]
    return write_fasta(tmp_path_factory.mktemp("md_small") / "other.fa", records)


def _bad_inputs(d: Path, inputs: dict[str, Path], small_other: Path) -> dict:
    g = genome()
    plain = write_genbank(
        d / "plain.gb", [genbank_record(f"P{i}.1", g[i * 5_000 :][:5_000], False) for i in range(3)]
    )
    ambiguous = write_fasta(d / "all_n.fa", [(f"N{i}", "ACGTN" * 200) for i in range(4)])
    single = write_fasta(d / "single.fa", [("ONLY", g[2_000_000:2_100_000])])
    proteins = SHARED / "data" / "MIIJ01000039.single.faa.gz"
    dup = write_fasta(d / "dup.fa", [("GEN_1", g[:3_000])])
    return {
        "genbank_without_cds": (
            ["--viral", plain, "--other", small_other],
            ["plain.gb", "no CDS /translation", "3 GenBank record", "FASTA"],
        ),
        "empty_class": (["--viral", ambiguous, "--other", small_other], ["viral class is empty"]),
        "class_too_small": (
            ["--viral", inputs["viral"], "--other", single],
            ["other class is too small for the split", "1 record"],
        ),
        "protein_fasta": (
            ["--viral", inputs["viral"], "--other", proteins],
            ["MIIJ01000039.single.faa.gz", "looks like a protein", "nucleotide"],
        ),
        "missing_file": (
            ["--viral", d / "nowhere.gbff", "--other", small_other],
            ["nowhere.gbff", "no such file"],
        ),
        "duplicate_record": (
            ["--viral", inputs["viral"], "--other", inputs["other_a"], dup],
            ["dup.fa", "GEN_1", "appears twice", "other_a.fa"],
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "genbank_without_cds",
        "empty_class",
        "class_too_small",
        "protein_fasta",
        "missing_file",
        "duplicate_record",
    ],
)
def test_bad_input_one_line_error_nothing_written(
    tmp_path: Path, inputs, small_other: Path, case: str
) -> None:
    args, words = _bad_inputs(tmp_path, inputs, small_other)[case]
    out = tmp_path / "data"
    rc, err = make(*map(str, args), "-o", str(out), "--chunk-size", str(C))
    assert_refused(rc, err, out, *words)


def test_failed_rerun_keeps_the_earlier_dataset_and_other_folders_are_refused(
    tmp_path: Path, inputs, small_other: Path
) -> None:
    out = tmp_path / "data"
    rc, err = make("--viral", str(inputs["viral"]), "--other", str(small_other), "-o", str(out))
    assert rc == 0, err
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = write_fasta(tmp_path / "bad.fa", [("X", "MKLLEEQQPPFF" * 20)])
    rc, err = make("--viral", str(bad), "--other", str(small_other), "-o", str(out))
    assert rc == 1 and "looks like a protein" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    busy = tmp_path / "mine"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    rc, err = make("--viral", str(inputs["viral"]), "--other", str(small_other), "-o", str(busy))
    assert rc == 1 and "not a make-dataset DATA_DIR" in err
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]


def test_manifest_groups_and_max_per_class(tmp_path: Path, inputs, small_other: Path) -> None:
    """Two files in one manifest group share its quota; relative paths are from the manifest."""
    for key in ("viral", "other_a", "other_b"):
        (tmp_path / inputs[key].name).write_bytes(inputs[key].read_bytes())
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text(
        "path\tlabel\tgroup\n"
        f"{inputs['viral'].name}\tviral\tphages\n"
        f"{inputs['other_a'].name}\tother\tbacteria\n"
        f"{inputs['other_b'].name}\tother\tbacteria\n"
        f"{small_other}\tother\tplants\n"
    )
    out = tmp_path / "data"
    rc, err = make("--manifest", str(manifest), "-o", str(out), "--max-per-class", "120",
                   "--chunk-size", str(C))  # fmt: skip
    assert rc == 0, err
    table = read_table(out / "dataset.tsv")
    assert Counter(r["label"] for r in table) == {"viral": 120, "other": 120}
    assert {r["group"] for r in table} == {"phages", "bacteria", "plants"}
    d = json.loads((out / "dataset.json").read_text())
    groups = {g["group"]: g for g in d["counts"]["by_group"]}
    other_total = groups["bacteria"]["candidate_frames"] + groups["plants"]["candidate_frames"]
    for name in ("bacteria", "plants"):
        share = 120 * groups[name]["candidate_frames"] / other_total
        assert math.floor(share) <= groups[name]["total"] <= math.ceil(share)
    sources = {r["source"] for r in table if r["group"] == "bacteria"}
    assert sources == {str(tmp_path / inputs[k].name) for k in ("other_a", "other_b")}
    bad = tmp_path / "bad.tsv"
    bad.write_text(f"path\tlabel\tgroup\n{inputs['viral'].name}\tvirus\tphages\n")
    rc, err = make("--manifest", str(bad), "-o", str(tmp_path / "bad_out"))
    assert_refused(rc, err, tmp_path / "bad_out", "bad.tsv line 2", "'virus'")


def test_translate_accepts_any_chunk_size_from_50_to_2000(tmp_path: Path, inputs) -> None:
    records = list(read_records(inputs["other_b"]))
    for c in (50, 150, 2000):
        out = tmp_path / f"c{c}"
        proc = run_cli("translate", str(inputs["other_b"]), "-o", str(out), "--chunk-size", str(c))
        assert proc.returncode == 0, proc.stderr
        expected = [
            (fid, aa)
            for rec in records
            for cid, chunk in chunk_record_pairs(rec.id, rec.seq, c)
            for fid, aa, _ in six_frames(cid, chunk)
        ]
        assert read_pairs(out / "other_b_identified_protein.faa") == expected
    for c in ("49", "2001"):
        proc = run_cli(
            "translate", str(inputs["other_b"]), "-o", str(tmp_path / c), "--chunk-size", c
        )
        assert proc.returncode != 0 and "from 50 to 2000" in proc.stderr
        assert not (tmp_path / c).exists()


def chunk_record_pairs(rec_id: str, seq: str, c: int) -> list[tuple[str, str]]:
    return [
        (f"{rec_id}_chunk_{i}", seq[a:b]) for i, (a, b) in enumerate(chunk_bounds(len(seq), c), 1)
    ]
