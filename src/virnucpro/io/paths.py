"""One check, one message for every input path a command is given (before any other work)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from virnucpro.errors import InputError

WHAT = "sequence file"


def input_file_problem(path: str | Path, what: str = WHAT) -> str | None:
    """Why ``path`` cannot be read as an input file (one line naming it), or None."""
    name = str(path)
    if os.path.isdir(path):
        return f"{name}: is a folder, not a {what}"
    if not os.path.lexists(path) or not os.path.exists(path):
        return f"{name}: no such file"
    if not os.path.isfile(path):
        return f"{name}: is not a regular file"
    if not os.access(path, os.R_OK):
        return f"{name}: permission denied"
    return None


def require_input_files(paths: Iterable[str | Path], what: str = WHAT) -> None:
    """Raise InputError with the same one-line message whichever command was given ``paths``."""
    for path in paths:
        problem = input_file_problem(path, what)
        if problem:
            raise InputError(problem)
