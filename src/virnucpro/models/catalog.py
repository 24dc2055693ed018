"""The models ``virnucpro download`` knows, by name, and where each lives in a models folder.

Names: every ESM-2 size by its fair-esm name (``esm2_t36_3B_UR50D``), ``DNABERT-S``, and the
original classifiers ``classifier-300`` and ``classifier-500``; hub ids
(``facebook/esm2_t33_650M_UR50D``, ``zhihan1996/DNABERT-S``) are accepted too, any case.
Sources come from ``registry.py`` with ``$VIRNUCPRO_PINS`` applied.
"""

from __future__ import annotations

from dataclasses import dataclass

from virnucpro.errors import InputError
from virnucpro.models.registry import (
    ESM2_HUB,
    HubModel,
    UrlFile,
    classifier_pins,
    dnabert_pin,
    esm2_pins,
)

DNABERT_NAME = "DNABERT-S"
DNABERT_HUB_ID = "zhihan1996/DNABERT-S"
# What `predict` uses by default: the 3B ESM-2, DNABERT-S and both original classifiers.
PREDICT_MODELS = ("esm2_t36_3B_UR50D", DNABERT_NAME, "classifier-300", "classifier-500")


@dataclass(frozen=True)
class CatalogModel:
    """One downloadable model and its place in a models folder."""

    name: str  # the download name
    kind: str  # "esm2", "dnabert_s" or "classifier"
    path: str  # inside a models folder: a folder (hub models) or a file (classifiers)
    hub: HubModel | None = None
    url: UrlFile | None = None
    aliases: tuple[str, ...] = ()

    @property
    def source(self) -> str:
        """``repo@revision`` or the URL."""
        if self.hub is not None:
            return f"{self.hub.repo_id}@{self.hub.revision}"
        assert self.url is not None
        return self.url.url


def catalog() -> dict[str, CatalogModel]:
    """Every known model by name, in size order: ESM-2s, DNABERT-S, classifiers."""
    models: dict[str, CatalogModel] = {}
    for name, entry in esm2_pins().items():
        aliases = (entry.repo_id.lower(), ESM2_HUB[name].repo_id.lower())
        models[name] = CatalogModel(name, "esm2", name, hub=entry, aliases=aliases)
    pin = dnabert_pin()
    models[DNABERT_NAME] = CatalogModel(
        DNABERT_NAME,
        "dnabert_s",
        DNABERT_NAME,
        hub=pin,
        aliases=(pin.repo_id.lower(), DNABERT_HUB_ID.lower()),
    )
    for size, url in classifier_pins().items():
        name = f"classifier-{size}"
        models[name] = CatalogModel(name, "classifier", f"{size}_model.pth", url=url)
    return models


def lookup(name: str) -> CatalogModel | None:
    """The model called ``name`` (download name or hub id, any case), or None."""
    wanted = name.strip().lower()
    for model in catalog().values():
        if wanted == model.name.lower() or wanted in model.aliases:
            return model
    return None


def select(names: str | list[str] | tuple[str, ...] | None) -> list[CatalogModel]:
    """Models for ``--models``: None (what predict uses), ``all``, or names (comma separated)."""
    if names is None:
        names = list(PREDICT_MODELS)
    elif isinstance(names, str):
        names = [n for n in names.replace(" ", "").split(",") if n]
    if [n.lower() for n in names] == ["all"]:
        return list(catalog().values())
    chosen: dict[str, CatalogModel] = {}
    for name in names:
        model = lookup(name)
        if model is None:
            known = ", ".join(catalog())
            raise InputError(f"unknown model {name!r}; known models: {known} (or all)")
        chosen[model.name] = model
    if not chosen:
        raise InputError("no model named; known models: " + ", ".join(catalog()))
    return list(chosen.values())


__all__ = ["PREDICT_MODELS", "CatalogModel", "catalog", "lookup", "select"]
