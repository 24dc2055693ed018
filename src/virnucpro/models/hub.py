"""Fetch pinned model files into a local cache, verify them, and resolve ESM-2 models.

Cache root: ``$VIRNUCPRO_CACHE`` or ``~/.cache/virnucpro``::

    hub/        Hugging Face cache layout (``hf_hub_download(cache_dir=...)``)
    urls/       files fetched by URL, one folder per URL
    checksums/  ``<repo>/<revision>/<file>.sha256`` records for hub files

Checksums: a sha256 pinned in ``registry.py`` is checked on every use. Where none is pinned
(None), the sha256 of the first download is written to a ``.sha256`` file in the cache (trust
on first use) and every later use is verified against that record. Nothing is ever downloaded
when ``HF_HUB_OFFLINE`` is set; a missing file then raises a ``ModelError`` naming the
repository, revision and file, and the option (``flag``) that supplies a local copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from virnucpro.errors import InputError, ModelError
from virnucpro.io.atomic import atomic_path, atomic_write_text
from virnucpro.models.base import PRECISIONS, EmbedderSpec

WEIGHT_CANDIDATES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(@[\w.-]+)?$")
_TRUE = {"1", "true", "yes", "on"}


class _NotCached(Exception):
    """The file is not in the cache and cannot be downloaded now."""


class _NotInRepo(Exception):
    """The repository has no such file at that revision."""


def cache_root() -> Path:
    """``$VIRNUCPRO_CACHE`` or ``~/.cache/virnucpro``."""
    return Path(os.environ.get("VIRNUCPRO_CACHE") or "~/.cache/virnucpro").expanduser()


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network access."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE or bool(
        constants.HF_HUB_OFFLINE
    )


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str | None, record: Path, what: str) -> str:
    """Check ``path`` against a pinned sha256, or against (or into) its first-use record."""
    actual = sha256_file(path)
    if expected is not None:
        if actual != expected.lower():
            raise ModelError(
                f"{path}: sha256 {actual} differs from the pinned {expected} for {what}; "
                "the file is damaged or not the pinned one: delete it and run again"
            )
        return actual
    if record.is_file():
        recorded = (record.read_text().split() or [""])[0]
        if actual != recorded:
            raise ModelError(
                f"{path}: sha256 {actual} differs from {recorded} recorded at its first "
                f"download ({record}) for {what}; delete both and run again"
            )
        return actual
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, f"{actual}  {path.name}\n")
    return actual


# --------------------------------------------------------------------------- hub files


def _download(repo_id: str, revision: str, filename: str) -> Path:
    """One hub file from the cache, downloading it unless offline."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = is_offline()
    try:
        local = hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache_root() / "hub",
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as exc:
        reason = "HF_HUB_OFFLINE is set" if offline else _first_line(exc)
        raise _NotCached(reason) from None
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelError(
            f"{repo_id} at revision {revision} is not available: {_first_line(exc)}"
        ) from None
    except EntryNotFoundError:
        raise _NotInRepo(filename) from None
    except (HfHubHTTPError, OSError) as exc:
        raise _NotCached(_first_line(exc)) from None
    return Path(local)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _not_cached(repo_id: str, revision: str, filename: str, reason: str, flag: str) -> ModelError:
    return ModelError(
        f"model file {filename} of {repo_id} (revision {revision}) is not in the cache "
        f"{cache_root() / 'hub'} and cannot be downloaded ({reason}); download that repository "
        f"at that revision (e.g. hf download {repo_id} --revision {revision} --local-dir DIR) "
        f"and pass {flag} DIR"
    )


def _record_path(repo_id: str, revision: str, filename: str) -> Path:
    return cache_root() / "checksums" / repo_id.replace("/", "--") / revision / f"{filename}.sha256"


def fetch_hub(
    repo_id: str,
    revision: str,
    files: Mapping[str, str | None],
    *,
    flag: str,
    need_weights: bool = False,
) -> tuple[Path, dict[str, str]]:
    """Fetch and verify ``files`` (plus the shards any ``*.index.json`` names).

    With ``need_weights`` and no weight file among ``files``, the usual weight names are
    tried in turn. Returns the snapshot folder and the sha256 of every file fetched.
    """
    wanted = dict(files)
    hashes: dict[str, str] = {}
    folder: Path | None = None
    pending = list(wanted)
    while pending:
        name = pending.pop(0)
        local = _fetch_one(repo_id, revision, name, flag)
        folder = folder or local.parent
        hashes[name] = _verified(local, repo_id, revision, name, wanted.get(name))
        if name.endswith(".index.json"):
            for shard in _index_shards(local):
                if shard not in wanted:
                    wanted[shard] = None
                    pending.append(shard)
        if not pending and need_weights and not any(n in WEIGHT_CANDIDATES for n in wanted):
            found = _find_weights(repo_id, revision, flag)
            wanted[found] = None
            pending.append(found)
    assert folder is not None, "fetch_hub needs at least one file"
    return folder, hashes


def _fetch_one(repo_id: str, revision: str, name: str, flag: str) -> Path:
    try:
        return _download(repo_id, revision, name)
    except _NotCached as exc:
        raise _not_cached(repo_id, revision, name, str(exc), flag) from None
    except _NotInRepo:
        raise ModelError(
            f"{repo_id} at revision {revision} has no file {name}; pass {flag} with a "
            "local copy of the model instead"
        ) from None


def _verified(local: Path, repo_id: str, revision: str, name: str, sha256: str | None) -> str:
    """Verify a downloaded hub file; records are keyed by the snapshot's commit."""
    commit = local.parent.name if local.parent.parent.name == "snapshots" else revision
    record = _record_path(repo_id, commit, name)
    return verify_sha256(local, sha256, record, f"{repo_id}@{commit}/{name}")


def _find_weights(repo_id: str, revision: str, flag: str) -> str:
    """The first of the usual weight file names the repository has (or the cache holds)."""
    not_cached = None
    for name in WEIGHT_CANDIDATES:
        try:
            _download(repo_id, revision, name)
            return name
        except _NotInRepo:
            continue
        except _NotCached as exc:
            not_cached = not_cached or str(exc)
    if not_cached is not None:
        names = " or ".join(WEIGHT_CANDIDATES)
        raise _not_cached(repo_id, revision, names, not_cached, flag)
    raise ModelError(f"{repo_id} at revision {revision} has none of {', '.join(WEIGHT_CANDIDATES)}")


def _index_shards(index: Path) -> list[str]:
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{index}: unreadable shard index ({exc})") from None


def fetch_files(repo_id: str, revision: str, files: dict[str, str | None], *, flag: str) -> Path:
    """Fetch and verify hub files pinned to ``revision``; return the local folder holding them.

    ``files`` maps file names to their sha256, or None where none is known (the first
    download's sha256 is then recorded and enforced from then on).
    """
    folder, _ = fetch_hub(repo_id, revision, files, flag=flag)
    return folder


# --------------------------------------------------------------------------- URL files


def url_cache_path(url: str) -> Path:
    """Where ``fetch_url`` keeps the file downloaded from ``url``."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    return cache_root() / "urls" / key / name


def fetch_url(url: str, sha256: str | None, *, flag: str) -> Path:
    """Fetch one file by URL into the cache and verify it (pinned sha256 or first-use record).

    Offline (``HF_HUB_OFFLINE``) or without network, a file not yet cached raises a
    ``ModelError`` naming the URL and ``flag``.
    """
    path = url_cache_path(url)
    record = path.with_name(path.name + ".sha256")
    if not path.is_file():
        reason = "HF_HUB_OFFLINE is set" if is_offline() else None
        if reason is None:
            try:
                _download_url(url, path)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = _first_line(exc)
        if reason is not None:
            raise ModelError(
                f"{url} is not in the cache ({path}) and cannot be downloaded ({reason}); "
                f"download it and pass {flag} /path/to/{path.name}"
            )
    with open(path, "rb") as handle:
        if handle.read(64).startswith(b"version https://git-lfs"):
            raise ModelError(f"{path}: a Git LFS pointer, not the file itself ({url})")
    verify_sha256(path, sha256, record, url)
    return path


def _download_url(url: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as response, atomic_path(path) as tmp:
        with open(tmp, "wb") as out:
            while block := response.read(1 << 20):
                out.write(block)


# --------------------------------------------------------------------------- ESM-2


def _combined_checksum(hashes: Sequence[tuple[str, str]]) -> str:
    """One file: its sha256. Several (shards): sha256 of their ``<sha256>  <name>`` lines."""
    if len(hashes) == 1:
        return hashes[0][1]
    lines = "".join(f"{digest}  {name}\n" for name, digest in sorted(hashes))
    return hashlib.sha256(lines.encode()).hexdigest()


def resolve_esm2(
    name_or_path: str,
    *,
    layers: Sequence[int] = (-1,),
    per_token: bool = False,
    precision: str = "auto",
    flag: str = "--esm-model",
) -> EmbedderSpec:
    """Find, fetch and verify an ESM-2 model once; return the spec every worker loads.

    Accepts a fair-esm name (``esm2_t36_3B_UR50D``) or its hub id (pinned revision), another
    hub id (``owner/name`` or ``owner/name@revision``), a local Hugging Face folder or a local
    fair-esm ``.pt`` file. Geometry and requested layers are checked here, before any worker.
    """
    from virnucpro.models.esm2 import hf_weight_files, read_esm2_config, resolve_layers
    from virnucpro.models.registry import ESM2_GEOMETRY, esm2_hub_entry

    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    path = Path(name_or_path).expanduser()
    geometry = None
    revision = None
    if path.exists():
        weights = path.resolve()
        files = hf_weight_files(weights) if weights.is_dir() else [weights]
        checksum = _combined_checksum([(f.name, sha256_file(f)) for f in files])
    else:
        entry = esm2_hub_entry(name_or_path)
        if entry is not None:
            geometry = ESM2_GEOMETRY[entry[0]]
            repo_id, revision, files_map = entry[1].repo_id, entry[1].revision, entry[1].files
        elif _HUB_ID.match(name_or_path):
            repo_id, _, revision = name_or_path.partition("@")
            revision, files_map = revision or "main", {"config.json": None}
        else:
            raise ModelError(
                f"ESM-2 model {name_or_path!r} is not a known name ({', '.join(ESM2_GEOMETRY)}), "
                f"a hub id (owner/name[@revision]) or an existing folder or .pt file"
            )
        weights, hashes = fetch_hub(repo_id, revision, files_map, flag=flag, need_weights=True)
        revision = weights.name if weights.parent.name == "snapshots" else revision
        chosen = []
        for file in hf_weight_files(weights):
            digest = hashes.get(file.name) or verify_sha256(
                file, None, _record_path(repo_id, revision, file.name), f"{repo_id}/{file.name}"
            )
            chosen.append((file.name, digest))
        checksum = _combined_checksum(chosen)
    cfg = read_esm2_config(weights)
    if geometry is not None and (cfg.num_layers, cfg.embed_dim, cfg.heads) != (
        geometry.layers,
        geometry.dim,
        geometry.heads,
    ):
        raise ModelError(
            f"{weights}: {cfg.num_layers} layers, dim {cfg.embed_dim}, {cfg.heads} heads; "
            f"{name_or_path} has {geometry.layers}, {geometry.dim}, {geometry.heads}"
        )
    resolve_layers(cfg, layers)  # refuse impossible layers now, before any worker starts
    return EmbedderSpec(
        family="esm2",
        weights=str(weights),
        name=name_or_path,
        revision=revision,
        checksum=checksum,
        layers=tuple(int(layer) for layer in layers),
        per_token=per_token,
        precision=precision,
        extra={"num_layers": cfg.num_layers, "embed_dim": cfg.embed_dim},
    )


__all__ = [
    "cache_root",
    "fetch_files",
    "fetch_hub",
    "fetch_url",
    "is_offline",
    "resolve_esm2",
    "sha256_file",
    "url_cache_path",
    "verify_sha256",
]
