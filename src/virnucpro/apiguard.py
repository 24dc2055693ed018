"""The ``if __name__ == "__main__":`` guard that spawned workers need, checked up front.

Workers start with the ``spawn`` method, which re-imports the main script in every worker.
A script that calls the API at its top level, unguarded, would run the whole job again in
each worker, and Python stops that with a long "bootstrapping phase" RuntimeError. We say
it in one line before any work starts instead.
"""

from __future__ import annotations

import ast
import multiprocessing
import sys
from functools import lru_cache

HINT = (
    "virnucpro starts its workers with the 'spawn' method, which re-imports the main "
    'script: put the call under `if __name__ == "__main__":` in {where}'
)


def check_main_guard() -> None:
    """Raise RuntimeError (one line) when called from an unguarded top level of a script."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise RuntimeError(HINT.format(where="the script (it was re-run by a starting worker)"))
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    if name is not None and (name == "__main__" or name.endswith(".__main__")):
        return  # python -m package: spawn does not re-run a package's __main__
    path = getattr(main, "__file__", None)
    if not path:
        return  # interactive, python -c, notebooks: nothing is re-imported
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__":
            break
        frame = frame.f_back
    if frame is None:
        return
    guards = _guarded_spans(str(path))
    if guards is None:
        return
    line = frame.f_lineno
    if not any(start <= line <= end for start, end in guards):
        raise RuntimeError(HINT.format(where=f"{path} (line {line} is not)"))


@lru_cache(maxsize=8)
def _guarded_spans(path: str) -> tuple[tuple[int, int], ...] | None:
    """Line spans of the top-level ``if __name__ == "__main__":`` blocks; None if unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    spans = []
    for node in tree.body:
        if isinstance(node, ast.If) and _is_main_test(node.test):  # its body, not its else
            spans.append((node.body[0].lineno, node.body[-1].end_lineno or node.lineno))
    return tuple(spans)


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1
