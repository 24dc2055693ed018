"""A models folder written by ``virnucpro download --dest DIR``, and reading models from it.

Layout (docs/FORMATS.md)::

    DIR/virnucpro_models.json   manifest: each model's source (repo and revision, or URL)
                                and every file's sha256 and size
    DIR/esm2_t36_3B_UR50D/      Hugging Face model folders, one per ESM-2 size
    DIR/DNABERT-S/
    DIR/300_model.pth, DIR/500_model.pth   the original classifiers

Commands given ``--models-dir DIR`` (or ``$VIRNUCPRO_MODELS``) take every model by name from
here, checked against the manifest, and never use the network.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from virnucpro.errors import ModelError
from virnucpro.io.atomic import atomic_write_text
from virnucpro.models.catalog import CatalogModel, lookup
from virnucpro.models.missing import MODELS_ENV, Missing, ModelsUnavailable

MANIFEST = "virnucpro_models.json"
FORMAT = "virnucpro.models"


def models_dir_from(explicit: str | os.PathLike | None) -> Path | None:
    """``explicit``, else ``$VIRNUCPRO_MODELS``, else None."""
    value = explicit if explicit not in (None, "") else os.environ.get(MODELS_ENV)
    return Path(value).expanduser() if value else None


def read_manifest(folder: Path) -> dict:
    """The manifest's ``models`` table ({} when there is none yet)."""
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or not isinstance(data.get("models"), dict):
            raise ValueError(f"not a {FORMAT} manifest")
        return data["models"]
    except (OSError, ValueError, AttributeError) as exc:
        raise ModelError(f"{path}: unreadable models manifest ({exc})") from None


def record_model(folder: Path, name: str, entry: dict) -> None:
    """Add or replace one model in the manifest (under a lock; written atomically)."""
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / f".{MANIFEST}.lock")):
        models = read_manifest(folder)
        models[name] = entry
        text = json.dumps({"format": FORMAT, "format_version": 1, "models": models}, indent=1)
        atomic_write_text(folder / MANIFEST, text + "\n")


@dataclass(frozen=True)
class FileCheck:
    """One file of a model in a models folder."""

    relative: str
    size: int | None  # None: missing
    status: str  # "ok", "missing", "mismatch"


def check_model(folder: Path, entry: dict, *, verify: bool = True) -> list[FileCheck]:
    """Every file of a manifest entry: present, and (``verify``) its sha256 as recorded."""
    from virnucpro.models.hub import sha256_file

    checks = []
    for relative, meta in sorted(entry.get("files", {}).items()):
        path = folder / relative
        if not path.is_file():
            checks.append(FileCheck(relative, None, "missing"))
            continue
        ok = not verify or sha256_file(path) == meta.get("sha256")
        checks.append(FileCheck(relative, path.stat().st_size, "ok" if ok else "mismatch"))
    return checks


def _not_staged(folder: Path, name: str, flag: str | None, why: str) -> ModelsUnavailable:
    return ModelsUnavailable(
        [Missing(f"{name}: {why}", name, flag)], [f"not in the models folder {folder}"], str(folder)
    )


def locate(folder: Path, model: CatalogModel, flag: str | None) -> tuple[Path, dict]:
    """The verified path of ``model`` in ``folder`` and its manifest entry."""
    entry = read_manifest(folder).get(model.name)
    if entry is None:
        raise _not_staged(folder, model.name, flag, f"no {model.path} recorded in {MANIFEST}")
    bad = [c for c in check_model(folder, entry) if c.status != "ok"]
    if bad:
        what = ", ".join(f"{c.relative} {c.status}" for c in bad)
        if all(c.status == "missing" for c in bad):
            raise _not_staged(folder, model.name, flag, what)
        raise ModelError(
            f"{folder}: {model.name} is damaged ({what} against {MANIFEST}); run "
            f"`virnucpro download --models {model.name} --dest {folder}` to repair it"
        )
    return folder / entry["path"], entry


def model_in_models_dir(folder: Path, name: str, flag: str | None) -> tuple[Path, str | None]:
    """(local path, hub revision) of the model called ``name`` in a models folder."""
    model = lookup(name)
    if model is None or model.kind == "classifier":
        hint = f"pass {flag} with its path" if flag else "pass its path as the model"
        raise ModelError(
            f"{name!r} is not a model name `virnucpro download` knows ({MODELS_ENV} / models "
            f"folder {folder}); for another model, {hint}"
        )
    path, entry = locate(folder, model, flag)
    return path, entry.get("revision")


def classifier_in_models_dir(folder: Path, chunk_size: int, flag: str | None) -> Path:
    """The original classifier for ``chunk_size`` in a models folder, verified."""
    model = lookup(f"classifier-{chunk_size}")
    if model is None:
        raise ModelError(f"no original classifier for chunk size {chunk_size}")
    path, _ = locate(folder, model, flag)
    return path.resolve()


__all__ = [
    "MANIFEST",
    "FileCheck",
    "check_model",
    "classifier_in_models_dir",
    "locate",
    "model_in_models_dir",
    "models_dir_from",
    "read_manifest",
    "record_model",
]
