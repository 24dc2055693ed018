"""The FASTA/FASTQ reader on real files: formats, compression, layout quirks and errors."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from virnucpro.errors import InputError
from virnucpro.io import fasta
from virnucpro.io.fasta import Record, detect_format, read_records

SHARED = Path(__file__).resolve().parents[1].parent / "shared"

MESSY = (
    "\n  \n"
    ">seq1 first record  \n"
    "acgtNN\n"
    "ACG T\t\n"
    "\n"
    ">seq2\tsecond\n"
    "\n"
    "MKV*\n"
    "x-.y\n"
    ">empty record\n"
    ">seq3\n"
    "ggg"
)
EXPECTED = [
    Record("seq1", "ACGTNNACGT", "seq1 first record", 3),
    Record("seq2", "MKV*X-.Y", "seq2\tsecond", 7),
    Record("empty", "", "empty record", 11),
    Record("seq3", "GGG", "seq3", 12),
]


def _write(path: Path, data: str | bytes, compress: bool = False) -> Path:
    raw = data.encode() if isinstance(data, str) else data
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def _reference_parse(text: str) -> list[tuple[str, str, int]]:
    """A naive line-by-line FASTA parser to compare with."""
    out: list[list] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.startswith(">"):
            out.append([line[1:].split()[0], [], number])
        elif out:
            out[-1][1].append("".join(line.split()).upper())
    return [(rec_id, "".join(parts), number) for rec_id, parts, number in out]


def test_plain_fasta_layout_quirks(tmp_path: Path) -> None:
    path = _write(tmp_path / "messy.fa", MESSY)
    assert list(read_records(path)) == EXPECTED
    assert detect_format(path) == "fasta"


def test_crlf_gives_same_records(tmp_path: Path) -> None:
    path = _write(tmp_path / "crlf.fa", MESSY.replace("\n", "\r\n"))
    assert list(read_records(path)) == EXPECTED


def test_gzip_detected_by_magic_not_suffix(tmp_path: Path) -> None:
    packed = _write(tmp_path / "looks_plain.fa", MESSY, compress=True)
    plain = _write(tmp_path / "looks_packed.fa.gz", MESSY)
    assert list(read_records(packed)) == EXPECTED
    assert list(read_records(plain)) == EXPECTED


def test_utf8_bom_is_ignored(tmp_path: Path) -> None:
    path = _write(tmp_path / "bom.fa", b"\xef\xbb\xbf>a\nAC\n")
    assert list(read_records(path)) == [Record("a", "AC", "a", 1)]


def test_random_files_match_naive_parser_across_block_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    lines = []
    for i in range(300):
        lines.append(f">r{i} desc {i}")
        seq = "".join(rng.choices("ACGTNacgtn", k=rng.randint(0, 200)))
        width = rng.randint(1, 80)
        lines += [seq[j : j + width] for j in range(0, len(seq), width)]
        lines += [""] * rng.randint(0, 2)
    text = "\n".join(lines) + "\n"
    path = _write(tmp_path / "random.fa.gz", text, compress=True)
    expected = _reference_parse(text)
    for block in (1, 7, 64, 1 << 20):
        monkeypatch.setattr(fasta, "_BLOCK", block)
        got = [(r.id, r.seq, r.line) for r in read_records(path)]
        assert got == expected, f"block size {block}"


def test_long_single_line_sequence(tmp_path: Path) -> None:
    seq = "ACGT" * 700_000  # 2.8 MB on one line, longer than a read block
    path = _write(tmp_path / "long.fa", f">chr\n{seq}\n>next\nAC\n")
    records = list(read_records(path))
    assert [(r.id, len(r.seq), r.line) for r in records] == [
        ("chr", len(seq), 1),
        ("next", 2, 3),
    ]
    assert records[0].seq == seq


def test_fastq(tmp_path: Path) -> None:
    text = "@r1 lane1\nacgT\n+\nIIII\n\n@r2\nGG\n+r2\n#I\n@r3\n\n+\n\n"
    for name, data in (("a.fq", text), ("b.fq", text.replace("\n", "\r\n"))):
        path = _write(tmp_path / name, data, compress=name == "b.fq")
        assert detect_format(path) == "fastq"
        assert list(read_records(path)) == [
            Record("r1", "ACGT", "r1 lane1", 1),
            Record("r2", "GG", "r2", 6),
            Record("r3", "", "r3", 10),
        ]


def test_real_protein_file() -> None:
    records = list(read_records(SHARED / "data" / "HG003687.proteins.faa.gz"))
    assert len(records) == 2100
    assert records[0].id == "938293.PRJEB85.HG003688_1"
    assert records[0].line == 1
    assert all(r.seq and r.seq.isupper() for r in records)
    assert len({r.id for r in records}) == 2100


def test_real_genome_is_one_record() -> None:
    (record,) = read_records(SHARED / "data" / "GCF_001457455.1_NCTC11397_genomic.fna.gz")
    assert record.id == "NZ_LN831026.1"
    assert len(record.seq) == 2_463_666
    assert set(record.seq) <= set("ACGTNRYKMSWBDHV")


def test_fixture_headers_counted() -> None:
    path = SHARED / "fixtures" / "original" / "test_with_orfs.fa"
    ids = [r.id for r in read_records(path)]
    headers = [line[1:].split()[0] for line in path.read_text().splitlines() if line[:1] == ">"]
    assert ids == headers


# ---- errors: one line, naming the file and, where there is one, the record and line ----

ERROR_CASES = {
    "empty": (b"", ["file is empty"]),
    "whitespace_only": (b"\n  \r\n\t\n", ["file is empty"]),
    "not_fasta": (b"\n\nhello world\nACGT\n", ["not a FASTA/FASTQ", "line 3", "hello world"]),
    "nul_byte": (b">r1\nAC\x00GT\n", ["looks binary (byte 0x00 at line 2)"]),
    "control_byte": (b">r1\nACGT\n>r2\x07\nAC\n", ["looks binary (byte 0x07 at line 3)"]),
    "non_ascii": (">r1 café\nACGT\n".encode(), ["looks binary (byte 0xc3 at line 1)"]),
    "binary_blob": (b"\x89PNG\r\n\x1a\n\x00\x00", ["looks binary (byte 0x89 at line 1)"]),
    "bad_char": (b">r1\nACGT\n>r2 x\nACGT\nAC1T\n", ["record 'r2'", "line 5", "'1'"]),
    "bad_char_first_line": (b">r1\nAC+T\n", ["record 'r1'", "line 2", "'+'"]),
    "empty_id": (b">r1\nACGT\n>\nACGT\n", ["line 3", "empty id"]),
    "blank_id": (b">   \nACGT\n", ["line 1", "empty id"]),
    "fastq_no_plus": (b"@r1\nACGT\nIIII\n", ["record 'r1'", "line 3", "'+'"]),
    "fastq_qual_length": (b"@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIII\n", ["'r2'", "line 8"]),
    "fastq_no_sequence": (b"@r1\n", ["record 'r1'", "missing sequence"]),
    "fastq_garbage_between": (b"@r1\nA\n+\nI\nxyz\n", ["line 5", "'@'"]),
    "fastq_bad_char": (b"@r1\nAC GT!\n+\nIIIII\n", ["record 'r1'", "line 2", "'!'"]),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
@pytest.mark.parametrize("compress", [False, True])
def test_errors_are_one_line_and_name_the_place(tmp_path: Path, case: str, compress: bool) -> None:
    data, parts = ERROR_CASES[case]
    path = _write(tmp_path / f"{case}.fa", data, compress=compress)
    with pytest.raises(InputError) as info:
        list(read_records(path))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for part in parts:
        assert part in message


def test_binary_error_line_counts_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "".join(f">r{i}\nACGT\n" for i in range(50)) + "AC\x01T\n"
    path = _write(tmp_path / "late.fa", text)
    for block in (3, 1 << 20):
        monkeypatch.setattr(fasta, "_BLOCK", block)
        with pytest.raises(InputError, match=r"byte 0x01 at line 101\)"):
            list(read_records(path))


@pytest.mark.parametrize("cut", ["truncated", "corrupt"])
def test_damaged_gzip(tmp_path: Path, cut: str) -> None:
    rng = random.Random(1)
    text = "".join(f">r{i}\n{''.join(rng.choices('ACGT', k=100))}\n" for i in range(500))
    packed = bytearray(gzip.compress(text.encode()))
    if cut == "truncated":
        packed = packed[: len(packed) // 2]
    else:
        packed[len(packed) // 2 : len(packed) // 2 + 16] = b"\xff" * 16
    path = _write(tmp_path / "reads.fa.gz", bytes(packed))
    with pytest.raises(InputError) as info:
        list(read_records(path))
    assert str(info.value) == f"{path}: gzip stream is truncated or corrupt"


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        list(read_records(tmp_path / "absent.fa"))
    with pytest.raises(InputError, match="is a folder"):
        list(read_records(tmp_path))
