"""Content digests of input files and of the index cache.

The index records the sha256 of every input file (computed by a thread while the parser reads
the same file, so the bytes come from the page cache once) and of every file of its store.
A touched but unchanged input is then recognised by its content, and a damaged cache is
found before it is reused.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

_BLOCK = 1 << 22


def sha256_file(path: str | Path) -> str:
    """sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


class FileHasher(threading.Thread):
    """sha256 of one file in a background thread (hashlib releases the GIL on big blocks)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(name="virnucpro-hash", daemon=True)
        self.path = Path(path)
        self.digest: str | None = None
        self.error: OSError | None = None
        self.start()

    def run(self) -> None:
        try:
            self.digest = sha256_file(self.path)
        except OSError as exc:
            self.error = exc

    def result(self) -> str:
        """Wait for the digest; OSError when the file could not be read."""
        self.join()
        if self.digest is None:
            raise self.error or OSError(f"{self.path}: not hashed")
        return self.digest


def store_digests(folder: Path, names: list[str]) -> dict[str, str]:
    """sha256 of each named file of ``folder``."""
    return {name: sha256_file(folder / name) for name in names}


def damaged_store_files(folder: Path, recorded: dict[str, str]) -> list[str]:
    """The files of ``folder`` whose content no longer has the recorded digest (or are gone)."""
    bad = []
    for name, digest in sorted(recorded.items()):
        try:
            if sha256_file(folder / name) != digest:
                bad.append(name)
        except OSError:
            bad.append(name)
    return bad
