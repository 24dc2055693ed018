"""Pinned model sources: hub revisions (commits) and file checksums.

A sha256 of None means no published value could be confirmed: ``hub.py`` then records the
sha256 of the first download and verifies every later use against that record. Values here
come from independent public records of these exact files at these exact commits; none is
guessed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from virnucpro.errors import ModelError


@dataclass(frozen=True)
class HubModel:
    """A Hugging Face model repository pinned to one commit, with the files we need."""

    repo_id: str
    revision: str  # 40-hex commit
    files: Mapping[str, str | None] = field(hash=False)  # filename -> sha256 (None: unknown)


@dataclass(frozen=True)
class UrlFile:
    """A single file at a URL pinned to an immutable location (e.g. a git commit)."""

    url: str
    sha256: str | None


@dataclass(frozen=True)
class Esm2Geometry:
    """Published geometry of an ESM-2 model (SPEC 2.1)."""

    layers: int
    dim: int
    heads: int


ESM2_GEOMETRY: Mapping[str, Esm2Geometry] = MappingProxyType(
    {
        "esm2_t6_8M_UR50D": Esm2Geometry(6, 320, 20),
        "esm2_t12_35M_UR50D": Esm2Geometry(12, 480, 20),
        "esm2_t30_150M_UR50D": Esm2Geometry(30, 640, 20),
        "esm2_t33_650M_UR50D": Esm2Geometry(33, 1280, 20),
        "esm2_t36_3B_UR50D": Esm2Geometry(36, 2560, 40),
        "esm2_t48_15B_UR50D": Esm2Geometry(48, 5120, 40),
    }
)


def _hub(repo_id: str, revision: str, files: dict[str, str | None]) -> HubModel:
    return HubModel(repo_id, revision, MappingProxyType(files))


_ST = "model.safetensors"
ESM2_HUB: Mapping[str, HubModel] = MappingProxyType(
    {
        "esm2_t6_8M_UR50D": _hub(
            "facebook/esm2_t6_8M_UR50D",
            "c731040fcd8d73dceaa04b0a8e6329b345b0f5df",
            {
                "config.json": "facb9355e8252149f6f99dff5fd1e32e890c3c655362b261d0c81cd6b5839c85",
                _ST: "24c5fa474c48f3b754b86efe752d5f189d2bcd88190fa2270fc92b2ef3034189",
            },
        ),
        "esm2_t12_35M_UR50D": _hub(
            "facebook/esm2_t12_35M_UR50D",
            "6fbf070e65b0b7291e7bbcd451118c216cff79d8",
            {
                "config.json": None,
                _ST: "e35647818e0e064351d4531ed480d225a002567b4b2b93ad3a9246d753150fc0",
            },
        ),
        "esm2_t30_150M_UR50D": _hub(
            "facebook/esm2_t30_150M_UR50D",
            "a695f6045e2e32885fa60af20c13cb35398ce30c",
            {
                "config.json": "e512f68ec444d99477703a9806639ca83da3dbc19f6c5fe428d6e5b7460972dc",
                _ST: "c3f1da8aea53bddd32c246c86168c23b9fd72341fb9db9a94436f855f5053566",
            },
        ),
        "esm2_t33_650M_UR50D": _hub(
            "facebook/esm2_t33_650M_UR50D",
            "08e4846e537177426273712802403f7ba8261b6c",
            {
                "config.json": "539095c22efc52a09d6147074ba4ca119f76a890df5901213b2b55f7d2f96b2b",
                _ST: "a08adabb949fa67ad3c14b509d04fd60368b35007b0095e3358f81200c4f4db0",
            },
        ),
        # The 3B repository holds its weights as two pytorch_model shards plus an index.
        "esm2_t36_3B_UR50D": _hub(
            "facebook/esm2_t36_3B_UR50D",
            "476b639933c8baad5ad09a60ac1a87f987b656fc",
            {
                "config.json": None,
                "pytorch_model.bin.index.json": None,
                "pytorch_model-00001-of-00002.bin": None,
                "pytorch_model-00002-of-00002.bin": None,
            },
        ),
        # The weight file names at this commit are not on record: hub.py looks for the usual
        # names (model.safetensors, pytorch_model.bin, or their sharded index).
        "esm2_t48_15B_UR50D": _hub(
            "facebook/esm2_t48_15B_UR50D",
            "5fbca39631164edc1d402a5aa369f982f72ee282",
            {"config.json": None},
        ),
    }
)

DNABERT_S = _hub(
    "zhihan1996/DNABERT-S",
    "00e47f96cdea35e4b6f5df89e5419cbe47d490c6",
    {
        "config.json": "d54c142114563aa34ef7c2b54ccc921d08e50cd7c3cd69c439d5e0d2bbcfcdee",
        "pytorch_model.bin": "f3cfc3d0541859df64759e758cc4bc40fe1d5760799a7d098a9f9f09501c1e5f",
        "tokenizer.json": "667f5a0e6e9630f7052b004784dda7c7aeba395cc4ca3c01b11b02e6aa29d7b1",
    },
)

_RAW = "https://raw.githubusercontent.com"
VIRNUCPRO_REPO = "Li-Jing-1997/VirNucPro"
VIRNUCPRO_COMMIT = "0f93f2755a7ea1acd3ff1bcf182892f960ef3326"
CLASSIFIERS: Mapping[int, UrlFile] = MappingProxyType(
    {
        size: UrlFile(f"{_RAW}/{VIRNUCPRO_REPO}/{VIRNUCPRO_COMMIT}/{size}_model.pth", None)
        for size in (300, 500)
    }
)


# --------------------------------------------------------------------------- overrides

PINS_ENV = "VIRNUCPRO_PINS"


def _read_pins() -> dict:
    """The JSON file named by ``$VIRNUCPRO_PINS`` (mirrors and tests), or nothing."""
    name = os.environ.get(PINS_ENV)
    if not name:
        return {}
    try:
        pins = json.loads(Path(name).read_text())
        if not isinstance(pins, dict):
            raise ValueError("not a JSON object")
        return pins
    except (OSError, ValueError) as exc:
        raise ModelError(f"{PINS_ENV}={name}: unreadable pins file ({exc})") from None


def _hub_pin(value: dict, where: str) -> HubModel:
    try:
        return _hub(str(value["repo_id"]), str(value["revision"]), dict(value["files"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{PINS_ENV}: {where} needs repo_id, revision and files ({exc})") from None


def esm2_pins() -> Mapping[str, HubModel]:
    """The pinned ESM-2 repositories, with any ``$VIRNUCPRO_PINS`` entries applied."""
    extra = _read_pins().get("esm2") or {}
    if not extra:
        return ESM2_HUB
    merged = dict(ESM2_HUB)
    for name, value in extra.items():
        if name not in ESM2_GEOMETRY:
            raise ModelError(f"{PINS_ENV}: esm2 entry {name!r} is not a known ESM-2 name")
        merged[name] = _hub_pin(value, f"esm2.{name}")
    return MappingProxyType(merged)


def dnabert_pin() -> HubModel:
    """The pinned DNABERT-S repository, or its ``$VIRNUCPRO_PINS`` replacement."""
    value = _read_pins().get("dnabert_s")
    return DNABERT_S if not value else _hub_pin(value, "dnabert_s")


def classifier_pins() -> Mapping[int, UrlFile]:
    """The original classifiers by chunk size, with any ``$VIRNUCPRO_PINS`` entries applied."""
    extra = _read_pins().get("classifiers") or {}
    if not extra:
        return CLASSIFIERS
    merged = dict(CLASSIFIERS)
    for size, value in extra.items():
        try:
            merged[int(size)] = UrlFile(str(value["url"]), value.get("sha256"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(
                f"{PINS_ENV}: classifiers.{size} needs url and sha256 ({exc})"
            ) from None
    return MappingProxyType(merged)


def esm2_hub_entry(name: str) -> tuple[str, HubModel] | None:
    """(fair-esm name, entry) for a fair-esm name or a ``facebook/<name>`` hub id, any case."""
    wanted = name.strip().lower()
    for key, entry in esm2_pins().items():
        if wanted in (key.lower(), entry.repo_id.lower(), ESM2_HUB[key].repo_id.lower()):
            return key, entry
    return None


def hub_files(repo_id: str) -> tuple[str, dict[str, str | None]]:
    """(pinned revision, {file: sha256 or None}) for a registered hub repository."""
    for entry in (dnabert_pin(), *esm2_pins().values()):
        if entry.repo_id.lower() == repo_id.strip().lower():
            return entry.revision, dict(entry.files)
    raise ModelError(f"{repo_id} is not a registered model repository (no pinned revision)")


def resolve_classifier(
    path: str | None,
    chunk_size: int,
    *,
    flag: str | None = "--classifier",
    models_dir: str | Path | None = None,
) -> Path:
    """A local classifier file, or (``path`` None) the original one for ``chunk_size``.

    The original comes from ``models_dir`` (or ``$VIRNUCPRO_MODELS``) when one is given, else
    from the cache, downloaded once.
    """
    if path is not None:
        local = Path(path).expanduser()
        if not local.is_file():
            raise ModelError(f"{flag or 'classifier'} {path}: no such file")
        return local.resolve()
    from virnucpro.models.models_dir import classifier_in_models_dir, models_dir_from

    folder = models_dir_from(models_dir)
    if folder is not None:
        return classifier_in_models_dir(folder, chunk_size, flag)
    classifiers = classifier_pins()
    if chunk_size not in classifiers:
        sizes = ", ".join(str(size) for size in classifiers)
        raise ModelError(
            f"no original classifier for chunk size {chunk_size} (only {sizes}); "
            f"pass {flag or 'a classifier file'} PATH"
        )
    from virnucpro.models.hub import fetch_url

    original = classifiers[chunk_size]
    return fetch_url(original.url, original.sha256, flag=flag, model=f"classifier-{chunk_size}")
