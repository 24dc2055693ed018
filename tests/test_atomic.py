"""Atomic writes: the final name only ever holds a complete old or new version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from virnucpro.io.atomic import (
    atomic_dir,
    atomic_path,
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
)


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_text_creates_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "report.txt"
    atomic_write_text(target, "first\n")
    assert target.read_text() == "first\n"
    atomic_write_text(target, "second é\n")
    assert target.read_text(encoding="utf-8") == "second é\n"
    assert _entries(tmp_path) == ["report.txt"]


def test_write_json_format(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    atomic_write_json(target, {"z": 1, "a": [1, 2]})
    text = target.read_text()
    assert text == '{\n  "z": 1,\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert json.loads(text) == {"z": 1, "a": [1, 2]}


def test_atomic_path_uses_hidden_sibling(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name == f".data.bin.tmp-{os.getpid()}"
        tmp.write_bytes(b"\x00\x01")
        assert not target.exists()
    assert target.read_bytes() == b"\x00\x01"
    assert _entries(tmp_path) == ["data.bin"]


def test_atomic_path_failure_keeps_old_file(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert _entries(tmp_path) == ["data.txt"]


def test_killed_writer_never_exposes_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "data.txt"
    target.write_text("old")
    code = (
        "import os, sys\n"
        "from virnucpro.io.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('partial')\n"
        "    os._exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(target)], check=False)
    assert result.returncode == 3
    assert target.read_text() == "old"


def test_atomic_dir_replaces_whole_folder(tmp_path: Path) -> None:
    final = tmp_path / "store"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("1")
        (tmp / "b.txt").write_text("2")
    assert _entries(final) == ["a.txt", "b.txt"]
    with atomic_dir(final) as tmp:
        (tmp / "c.txt").write_text("3")
    assert _entries(final) == ["c.txt"]
    assert _entries(tmp_path) == ["store"]


def test_atomic_dir_failure_keeps_old_folder(tmp_path: Path) -> None:
    final = tmp_path / "store"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("x")
            raise ValueError("crash while building")
    assert _entries(final) == ["a.txt"]
    assert _entries(tmp_path) == ["store"]


def test_fsync_dir(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    fsync_dir(str(tmp_path))
