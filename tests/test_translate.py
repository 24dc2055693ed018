"""Chunking and six-frame translation: the original's fixtures, SPEC edge cases, and the fast
file-level path (``translate_file``) against the pure reference (``chunking``)."""

from __future__ import annotations

import gzip
import random
from collections import Counter
from pathlib import Path

import pytest

from virnucpro.errors import InputError
from virnucpro.pipeline import translate as fast
from virnucpro.pipeline.chunking import (
    CODON_TABLE,
    chunk_bounds,
    chunk_record,
    reverse_complement,
    six_frames,
)
from virnucpro.pipeline.translate import output_stem, translate_file

ORIGINAL = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "original"


def parse_fasta(path: Path) -> list[tuple[str, str]]:
    """(id, sequence) pairs of a FASTA file, any line wrapping, case kept."""
    records: list[tuple[str, list[str]]] = []
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            records.append((line[1:].split()[0], []))
        elif line.strip():
            records[-1][1].append(line.strip())
    return [(name, "".join(parts)) for name, parts in records]


def write_fasta(path: Path, records: list[tuple[str, str]], width: int = 60) -> Path:
    lines = []
    for name, seq in records:
        lines.append(f">{name} some description\n")
        lines.extend(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
    path.write_text("".join(lines))
    return path


def reference(records: list[tuple[str, str]], c: int) -> dict:
    """What the reference rules give for (id, seq) records with chunk size c."""
    chunks, nucleotides, proteins, rows = [], [], [], []
    for name, seq in records:
        seq = seq.upper()
        pieces = chunk_record(name, seq, c)
        kept = 0
        for chunk_id, chunk in pieces:
            chunks.append((chunk_id, chunk))
            frames = six_frames(chunk_id, chunk)
            nucleotides += [(f, nt) for f, _, nt in frames]
            proteins += [(f, aa) for f, aa, _ in frames]
            kept += len(frames)
        rows.append([name, str(len(seq)), str(len(pieces)), str(kept)])
    return {"chunked": chunks, "nucleotide": nucleotides, "protein": proteins, "rows": rows}


def run_fast(path: Path, out_dir: Path, c: int) -> tuple[fast.TranslateResult, dict]:
    tsv = out_dir / "records.tsv"
    result = translate_file(path, out_dir, c, records_tsv=tsv)
    lines = tsv.read_text().splitlines()
    assert lines[0] == "id\tlength\tchunks\tframes_kept"
    got = {
        "chunked": parse_fasta(result.chunked_fasta),
        "nucleotide": parse_fasta(result.nucleotide_fasta),
        "protein": parse_fasta(result.protein_fasta),
        "rows": [line.split("\t") for line in lines[1:]],
    }
    return result, got


# --- the original's own outputs ---------------------------------------------------------


@pytest.mark.parametrize("stem", ["test_with_orfs", "test_sequences_small"])
def test_reproduces_original_fixtures(tmp_path: Path, stem: str) -> None:
    result = translate_file(ORIGINAL / f"{stem}.fa", tmp_path, 500)
    assert result.chunked_fasta == tmp_path / f"{stem}_chunked500.fa"
    assert parse_fasta(result.chunked_fasta) == parse_fasta(ORIGINAL / f"{stem}_chunked500.fa")
    expected = {
        result.nucleotide_fasta: ORIGINAL / f"{stem}_identified_nucleotide.fa",
        result.protein_fasta: ORIGINAL / f"{stem}_identified_protein.faa",
    }
    for ours, theirs in expected.items():
        assert ours.name == theirs.name
        if theirs.exists():
            assert parse_fasta(ours) == parse_fasta(theirs)
    records = parse_fasta(ORIGINAL / f"{stem}.fa")
    ref = reference(records, 500)
    assert parse_fasta(result.nucleotide_fasta) == ref["nucleotide"]
    assert parse_fasta(result.protein_fasta) == ref["protein"]
    assert result.records == len(records)
    assert result.frames_kept == len(ref["nucleotide"])


def test_fixture_frames_by_hand() -> None:
    """The fixture's kept frames are R1 and R2 of each record (F1 of both ends in a stop)."""
    records = dict(parse_fasta(ORIGINAL / "test_with_orfs_chunked500.fa"))
    frames = six_frames("synthetic_seq_1_chunk_1", records["synthetic_seq_1_chunk_1"])
    assert [f for f, _, _ in frames] == ["synthetic_seq_1_chunk_1R1", "synthetic_seq_1_chunk_1R2"]
    _, protein, nucleotide = frames[0]
    assert len(records["synthetic_seq_1_chunk_1"]) == 174 and len(protein) == 58
    assert len(nucleotide) == 174  # 3*58+1 = 175, clipped at the end of the strand


# --- SPEC 1.1: chunking ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "c", "expected"),
    [
        (0, 500, []),
        (1, 500, [(0, 1)]),
        (2, 500, [(0, 2)]),
        (499, 500, [(0, 499)]),
        (500, 500, [(0, 500)]),
        (501, 500, [(0, 500), (250, 501)]),
        (600, 500, [(0, 500), (299, 600)]),  # quirk: a 301-nt last chunk
        (1000, 500, [(0, 500), (500, 1000)]),
        (1001, 500, [(0, 500), (333, 833), (666, 1001)]),
        (601, 300, [(0, 300), (200, 500), (400, 601)]),  # m=101 > k-1: 201-nt last
        (900, 300, [(0, 300), (300, 600), (600, 900)]),
    ],
)
def test_chunk_bounds_by_hand(n: int, c: int, expected: list[tuple[int, int]]) -> None:
    assert chunk_bounds(n, c) == expected


def test_fast_chunk_bounds_match_reference() -> None:
    for c in (1, 2, 3, 7, 300, 500):
        for n in range(0, 3 * c + 50 if c > 10 else 200):
            assert fast.fast_bounds(n, c) == chunk_bounds(n, c), (n, c)
    for n in (10_001, 123_457, 2_460_000):
        assert fast.fast_bounds(n, 500) == chunk_bounds(n, 500)


def test_chunk_ids_and_bad_chunk_size() -> None:
    assert [i for i, _ in chunk_record("r1", "A" * 1001, 500)] == [
        "r1_chunk_1",
        "r1_chunk_2",
        "r1_chunk_3",
    ]
    with pytest.raises(ValueError):
        chunk_bounds(10, 0)


# --- SPEC 1.2: translation and frame selection --------------------------------------------


def test_codon_table_is_standard() -> None:
    assert len(CODON_TABLE) == 64
    assert [k for k, v in CODON_TABLE.items() if v == "*"] == ["TAA", "TAG", "TGA"]
    assert (CODON_TABLE["ATG"], CODON_TABLE["TGG"], CODON_TABLE["GGC"]) == ("M", "W", "G")


def test_reverse_complement_keeps_other_characters() -> None:
    assert reverse_complement("ACGTRYKMN") == "NMKYRACGT"
    assert reverse_complement("AC-*.G") == "C.*-GT"


def test_codons_with_n_are_dropped() -> None:
    assert six_frames("x", "ATGNNNAAA") == [("xF1", "MK", "ATGNNNA"), ("xR1", "FH", "TTTNNNC")]


def test_iupac_kept_in_reverse_complement() -> None:
    assert six_frames("x", "AAAYCCC") == [
        ("xF1", "K", "AAAY"),
        ("xF2", "P", "AAYC"),
        ("xR1", "G", "GGGY"),
        ("xR2", "F", "GGYT"),
    ]


def test_stops_and_empty_frames_are_dropped() -> None:
    assert six_frames("x", "ATGTAA") == [  # F1 = M* is dropped; reverse strand TTACAT
        ("xF2", "C", "TGTA"),
        ("xF3", "V", "GTAA"),
        ("xR1", "LH", "TTACAT"),  # 3*2+1 = 7, clipped at the strand end
        ("xR2", "Y", "TACA"),
        ("xR3", "T", "ACAT"),
    ]
    assert six_frames("x", "NNNNNN") == []
    assert six_frames("x", "AT") == []


def test_lower_case_is_upper_cased() -> None:
    assert six_frames("x", "atgnnnaaa") == six_frames("x", "ATGNNNAAA")


def test_edge_lengths_file(tmp_path: Path) -> None:
    """Hand-checked whole-file behaviour for the edge lengths of SPEC 1.1."""
    rng = random.Random(7)
    seqs = {n: "".join(rng.choice("ACGT") for _ in range(n)) for n in (1, 2, 600, 1001)}
    records = [
        ("one", seqs[1]),
        ("empty", ""),
        ("two", seqs[2]),
        ("six_hundred", seqs[600]),
        ("long", seqs[1001]),
    ]
    result, got = run_fast(write_fasta(tmp_path / "edge.fasta", records), tmp_path / "out", 500)
    assert got["chunked"] == [
        ("one_chunk_1", seqs[1]),
        ("two_chunk_1", seqs[2]),
        ("six_hundred_chunk_1", seqs[600][0:500]),
        ("six_hundred_chunk_2", seqs[600][299:600]),
        ("long_chunk_1", seqs[1001][0:500]),
        ("long_chunk_2", seqs[1001][333:833]),
        ("long_chunk_3", seqs[1001][666:1001]),
    ]
    assert got["rows"][:3] == [
        ["one", "1", "1", "0"],
        ["empty", "0", "0", "0"],
        ["two", "2", "1", "0"],
    ]
    assert (result.records, result.empty_records, result.chunks) == (5, 1, 7)
    assert result.skipped == [("empty", "empty sequence")]
    assert result.bases == 1 + 2 + 600 + 1001
    assert not any(name.startswith(("one_", "two_")) for name, _ in got["protein"])
    assert got == reference(records, 500)


@pytest.mark.parametrize("c", [500, 300])
def test_edge_lengths_fast_equals_reference(tmp_path: Path, c: int) -> None:
    rng = random.Random(c)
    alphabet = "ACGT" * 20 + "NRYKMSWBDHV"
    lengths = [0, 1, 2, 3, 4, 5, 6, c - 1, c, c + 1, 2 * c + 1, 600, 1001]
    records = [
        (f"r{i}", "".join(rng.choice(alphabet) for _ in range(n))) for i, n in enumerate(lengths)
    ]
    records.append(("lower", orf(rng, 700).lower()))
    _, got = run_fast(write_fasta(tmp_path / "edge.fa", records), tmp_path / "out", c)
    assert got == reference(records, c)
    assert any(name.startswith("lower_") for name, _ in got["protein"])


def test_fastq_and_gzip_input(tmp_path: Path) -> None:
    rng = random.Random(3)
    records = [(f"q{i}", orf(rng, rng.randrange(1, 700))) for i in range(20)]
    text = "".join(f"@{n}\n{s}\n+\n{'I' * len(s)}\n" for n, s in records)
    path = tmp_path / "reads.fastq.gz"
    path.write_bytes(gzip.compress(text.encode()))
    result, got = run_fast(path, tmp_path / "out", 300)
    assert result.chunked_fasta.name == "reads_chunked300.fa"
    assert got == reference(records, 300)


# --- fast path against the reference on random records ------------------------------------


def orf(rng: random.Random, n: int) -> str:
    """A sequence of n bases without stops in a random frame of a random strand, so that
    frames are kept, with a sprinkle of N, IUPAC codes and other allowed characters."""
    sense = [codon for codon, aa in CODON_TABLE.items() if aa != "*"]
    body = "".join(rng.choice(sense) for _ in range(n // 3 + 2))
    seq = body[rng.randrange(3) :][:n]
    if rng.random() < 0.5:
        seq = reverse_complement(seq)
    chars = list(seq)
    for _ in range(rng.choice([0, 0, 0, 1, 3])):
        if chars:
            chars[rng.randrange(len(chars))] = rng.choice("NNNNRYKMSWBDHVX*-.")
    return "".join(chars)


def random_records(seed: int, count: int, c: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    records = []
    for i in range(count):
        kind = rng.random()
        if kind < 0.1:
            n = rng.randrange(0, 8)
        elif kind < 0.2:
            n = rng.choice([c - 1, c, c + 1, 2 * c + 1, 600, 1001])
        else:
            n = rng.randrange(1, 2 * c + 200)
        if rng.random() < 0.6:
            seq = orf(rng, n)
        else:
            seq = "".join(rng.choice("ACGTACGTACGTN") for _ in range(n))
        if rng.random() < 0.05:
            seq = seq.lower()
        records.append((f"rec{i}", seq))
    records.insert(count // 2, ("big", orf(rng, 40_000)))  # spans several small blocks
    return records


@pytest.mark.parametrize(("c", "block"), [(500, None), (500, 2_000), (300, 1_000)])
def test_fast_equals_reference_on_random_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, c: int, block: int | None
) -> None:
    if block is not None:
        monkeypatch.setattr(fast, "_BLOCK_BASES", block)
    records = random_records(seed=c + (block or 0), count=2_500, c=c)
    calls: list[int] = []
    path = write_fasta(tmp_path / "random.fa", records, width=70)
    tsv = tmp_path / "out" / "records.tsv"
    result = translate_file(path, tmp_path / "out", c, records_tsv=tsv, progress=calls.append)
    ref = reference(records, c)
    assert parse_fasta(result.chunked_fasta) == ref["chunked"]
    assert parse_fasta(result.nucleotide_fasta) == ref["nucleotide"]
    assert parse_fasta(result.protein_fasta) == ref["protein"]
    assert [r.split("\t") for r in tsv.read_text().splitlines()[1:]] == ref["rows"]
    assert len(ref["protein"]) > 1_000  # the comparison covers many kept frames
    assert any("N" in nt for _, nt in ref["nucleotide"])  # ... including dropped codons

    upper = [seq.upper() for _, seq in records]
    other = Counter(ch for seq in upper for ch in seq if ch not in "ACGTN")
    empty = [(name, "empty sequence") for name, seq in records if not seq]
    assert (result.records, result.empty_records, result.skipped) == (
        len(records),
        len(empty),
        empty,
    )
    assert sum(calls) == len(records)
    assert result.chunks == len(ref["chunked"])
    assert result.frames_kept == len(ref["protein"])
    kept_chunks = {name[:-2] for name, _ in ref["protein"]}
    assert result.chunks_without_frame == sum(1 for n, _ in ref["chunked"] if n not in kept_chunks)
    assert result.bases == sum(map(len, upper))
    assert result.non_acgtn_chars == other and result.non_acgtn == sum(other.values())


# --- outputs: names and atomicity ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("reads.fa", "reads"),
        ("reads.fastq.gz", "reads"),
        ("sample.FNA.GZ", "sample"),
        ("a.b.fasta", "a.b"),
        ("x.fas", "x"),
        ("p.faa", "p"),
        ("r.fq", "r"),
        ("notes.txt", "notes.txt"),
        (".fa", ".fa"),
    ],
)
def test_output_stem(name: str, stem: str) -> None:
    assert output_stem(Path(name)) == stem


def test_malformed_input_leaves_no_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast, "_BLOCK_BASES", 1_000)  # several blocks written before the error
    rng = random.Random(1)
    good = write_fasta(tmp_path / "in.fa", [(f"r{i}", orf(rng, 500)) for i in range(50)])
    bad = tmp_path / "bad.fa"
    bad.write_text(good.read_text() + ">broken\nACGT1ACGT\n")
    out = tmp_path / "out"
    out.mkdir()
    previous = out / "bad_chunked500.fa"
    previous.write_text(">old\nACGT\n")
    with pytest.raises(InputError, match=r"bad\.fa.*broken.*line"):
        translate_file(bad, out, 500, records_tsv=out / "records.tsv")
    assert sorted(p.name for p in out.iterdir()) == ["bad_chunked500.fa"]
    assert previous.read_text() == ">old\nACGT\n"


def test_missing_input_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        translate_file(tmp_path / "absent.fa", tmp_path / "out", 500)
    assert not any((tmp_path / "out").iterdir())
