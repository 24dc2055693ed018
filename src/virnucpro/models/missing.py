"""The error for models that are not here and cannot be fetched now, and its message.

The message is short and has three parts: what is missing (and why it cannot be
downloaded), the ``virnucpro download`` command to run where there is internet, and how to
point at a copy. From the CLI (a ``flag`` is known) it names options; from the Python API
(``flag`` None) it names the Python function, the environment variable and the keyword.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from virnucpro.errors import ModelError

MODELS_ENV = "VIRNUCPRO_MODELS"


@dataclass(frozen=True)
class Missing:
    """One model that is not available."""

    what: str  # e.g. "facebook/esm2_t36_3B_UR50D at revision 476b...: config.json"
    model: str | None  # its name for `virnucpro download`, None when download cannot fetch it
    flag: str | None  # the CLI option taking a local copy; None from the Python API
    fetch_hint: str | None = None  # how to fetch a model that `virnucpro download` does not know


class ModelsUnavailable(ModelError):
    """Models missing here that cannot be downloaded now (offline, unreachable, not staged)."""

    def __init__(
        self, missing: Sequence[Missing], reasons: Sequence[str], dest: str | None = None
    ) -> None:
        self.missing = tuple(missing)
        self.reasons = tuple(dict.fromkeys(reasons))
        self.dest = dest
        super().__init__(_message(self.missing, self.reasons, dest))

    @classmethod
    def merge(cls, errors: Iterable[ModelsUnavailable]) -> ModelsUnavailable:
        """One error naming every missing model of ``errors`` (predict resolves three)."""
        errors = list(errors)
        missing = [m for e in errors for m in e.missing]
        reasons = [r for e in errors for r in e.reasons]
        dest = next((e.dest for e in errors if e.dest), None)
        return cls(missing, reasons, dest)


def _message(missing: Sequence[Missing], reasons: Sequence[str], dest: str | None) -> str:
    api = all(m.flag is None for m in missing)
    names = list(dict.fromkeys(m.model for m in missing if m.model))
    target = dest or "DIR"
    count = f"{len(missing)} model{'s' if len(missing) != 1 else ''}"
    lines = [f"{count} not available here and not downloadable now ({'; '.join(reasons)}):"]
    lines += [f"  {m.what}" for m in missing]
    if names:
        if api:
            lines.append(
                f"Where there is internet, run: virnucpro.download_models({names!r}, "
                f"dest={target!r}) (the `virnucpro download` command does the same)"
            )
        else:
            lines.append(
                f"Where there is internet, run: virnucpro download --models {','.join(names)} "
                f"--dest {target}"
            )
    lines += [m.fetch_hint for m in missing if m.fetch_hint]
    if not names:
        return "\n".join(lines)
    flags = list(dict.fromkeys(m.flag for m in missing if m.flag))
    if api:
        lines.append(
            f"Then set {MODELS_ENV}={target} (or pass models_dir={target!r}), "
            "or pass the path of a local copy as the model."
        )
    else:
        copies = f", or give a local copy with {' / '.join(flags)}" if flags else ""
        lines.append(
            f"Then copy {target} here and pass --models-dir {target} "
            f"(or set {MODELS_ENV}={target}){copies}."
        )
    return "\n".join(lines)


__all__ = ["MODELS_ENV", "Missing", "ModelsUnavailable"]
