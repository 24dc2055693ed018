"""Fetch pinned model files, verify them, and resolve ESM-2 models.

Hub files live in the standard Hugging Face cache (``hub_cache_dir``: ``$HF_HUB_CACHE`` or
``$HF_HOME/hub``), fetched by ``huggingface_hub.hf_hub_download`` at the pinned revision from
``$HF_ENDPOINT`` (default the Hugging Face Hub), or into a plain folder (``local_dir``) for
``virnucpro download --dest``. Our own files live under ``$VIRNUCPRO_CACHE`` (default
``~/.cache/virnucpro``)::

    urls/       files fetched by URL (the classifiers), one folder per URL
    checksums/  ``<repo>/<revision>/<file>.sha256`` first-use records

Checksums: a sha256 pinned in ``registry.py`` is checked on every use. Where none is pinned
(None), a fresh file is checked against the hub's ETag (the sha256 of LFS files, the git blob
sha1 of others) and its sha256 is recorded (trust on first use); every later use is verified
against that record. A downloaded file that fails is removed. Nothing is downloaded when
``HF_HUB_OFFLINE`` is set, and one probe (``netprobe``) guards the first download of a
process; a missing file then raises ``ModelsUnavailable`` (``missing.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from virnucpro.errors import InputError, ModelError
from virnucpro.io.atomic import atomic_write_text
from virnucpro.models.missing import Missing, ModelsUnavailable

if TYPE_CHECKING:  # base imports torch; downloading needs none of it
    from virnucpro.models.base import EmbedderSpec

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


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (remembered per process while size and mtime hold)."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key in _SHA_MEMO:
        return _SHA_MEMO[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    _SHA_MEMO[key] = digest.hexdigest()
    return _SHA_MEMO[key]


def verify_sha256(
    path: Path, expected: str | None, record: Path, what: str, *, actual: str | None = None
) -> str:
    """Check ``path`` against a pinned sha256, or against (or into) its first-use record."""
    actual = actual or sha256_file(path)
    if expected is not None:
        if actual != expected.lower():
            raise ModelError(
                f"{path}: sha256 {actual} differs from the pinned {expected} for {what}; "
                "the file is damaged or not the pinned one"
            )
        return actual
    if record.is_file():
        recorded = (record.read_text().split() or [""])[0]
        if actual != recorded:
            raise ModelError(
                f"{path}: sha256 {actual} differs from {recorded} recorded at its first "
                f"download ({record}) for {what}"
            )
        return actual
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, f"{actual}  {path.name}\n")
    return actual


# --------------------------------------------------------------------------- hub files


def hub_cache_dir() -> Path:
    """The standard Hugging Face cache, as huggingface_hub finds it (read at call time).

    ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``, else
    ``~/.cache/huggingface/hub``: shared with transformers and every other Hugging Face tool.
    """
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
        home = os.path.join(xdg, "huggingface")
    return Path(home).expanduser() / "hub"


def hub_endpoint() -> str:
    """``$HF_ENDPOINT`` (a mirror) or the Hugging Face Hub, read at call time."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _download(
    repo_id: str,
    revision: str,
    filename: str,
    *,
    local_dir: Path | None = None,
    progress: type | None = None,
) -> Path:
    """One hub file: from the cache (or ``local_dir``), else downloaded unless offline.

    A file already there costs no request. Before the first download of the process one
    probe checks that the endpoint answers (``netprobe``): no per-file retry storm offline.
    """
    from huggingface_hub import hf_hub_download, hf_hub_url
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from virnucpro.models import netprobe

    endpoint = hub_endpoint()
    where = {"cache_dir": hub_cache_dir(), "local_dir": local_dir, "endpoint": endpoint}
    present = _already_here(repo_id, revision, filename, local_dir)
    if present is not None:
        return present
    if is_offline():
        raise _NotCached("HF_HUB_OFFLINE is set")
    url = hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint)
    reason = netprobe.unreachable(url)
    if reason is not None:
        raise _NotCached(reason)
    try:
        local = hf_hub_download(repo_id, filename, revision=revision, tqdm_class=progress, **where)
    except LocalEntryNotFoundError as exc:
        raise _NotCached(_first_line(exc)) from None
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ModelError(
            f"{repo_id} at revision {revision} is not available from {endpoint}: {_first_line(exc)}"
        ) from None
    except EntryNotFoundError:
        raise _NotInRepo(filename) from None
    except (HfHubHTTPError, OSError) as exc:
        raise _NotCached(_first_line(exc)) from None
    return Path(local)


def _already_here(
    repo_id: str, revision: str, filename: str, local_dir: Path | None
) -> Path | None:
    """The file from the cache (or ``local_dir``) without any request; raises ``_NotInRepo``
    when the cache knows the file does not exist at that revision.

    Deliberately not ``hf_hub_download(local_files_only=True)``: building its request
    headers can cost a network call (huggingface_hub looks up a registry for its
    User-Agent), which a cached, offline run must not wait for.
    """
    if local_dir is not None:
        path = local_dir / filename
        if not path.is_file():
            return None
        try:
            from huggingface_hub._local_folder import read_download_metadata

            metadata = read_download_metadata(local_dir=local_dir, filename=filename)
        except (ImportError, OSError, ValueError):
            return path
        return path if metadata is None or metadata.commit_hash == revision else None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache_dir(), revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if cached is not None:  # huggingface_hub's "known not to exist" marker
        raise _NotInRepo(filename)
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _missing_hub(
    repo_id: str, revision: str, filename: str, reason: str, flag: str | None, model: str | None
) -> ModelsUnavailable:
    hint = None
    if model is None:
        then = f"pass {flag} DIR" if flag else "pass DIR as the model"
        hint = (
            f"{repo_id} is not one of the models `virnucpro download` knows: fetch it with "
            f"`hf download {repo_id} --revision {revision} --local-dir DIR`, then {then}"
        )
    what = f"{repo_id} at revision {revision}, file {filename}"
    what = f"{model}: {what}" if model else what
    return ModelsUnavailable(
        [Missing(what, model, flag, hint)],
        [reason],
    )


def record_path(repo_id: str, revision: str, filename: str) -> Path:
    return cache_root() / "checksums" / repo_id.replace("/", "--") / revision / f"{filename}.sha256"


def fetch_hub(
    repo_id: str,
    revision: str,
    files: Mapping[str, str | None],
    *,
    flag: str | None,
    need_weights: bool = False,
    model: str | None = None,
    local_dir: Path | None = None,
    progress: type | None = None,
) -> tuple[Path, dict[str, str]]:
    """Fetch and verify ``files`` (plus the shards any ``*.index.json`` names).

    With ``need_weights`` and no weight file among ``files``, the usual weight names are
    tried in turn. ``local_dir``: a plain folder instead of the Hugging Face cache.
    ``model``: the name ``virnucpro download`` knows it by (for the message when missing).
    Returns the folder and the sha256 of every file fetched.
    """
    wanted = dict(files)
    hashes: dict[str, str] = {}
    folder: Path | None = None
    pending = list(wanted)
    fetch = {"flag": flag, "model": model, "local_dir": local_dir, "progress": progress}
    while pending:
        name = pending.pop(0)
        local = _fetch_one(repo_id, revision, name, **fetch)
        folder = folder or local.parent
        hashes[name] = _verified(local, repo_id, revision, name, wanted.get(name), local_dir)
        if name.endswith(".index.json"):
            for shard in index_shards(local):
                if shard not in wanted:
                    wanted[shard] = None
                    pending.append(shard)
        if not pending and need_weights and not any(n in WEIGHT_CANDIDATES for n in wanted):
            found = _find_weights(repo_id, revision, **fetch)
            wanted[found] = None
            pending.append(found)
    assert folder is not None, "fetch_hub needs at least one file"
    return folder, hashes


def _fetch_one(
    repo_id: str,
    revision: str,
    name: str,
    *,
    flag: str | None,
    model: str | None,
    local_dir: Path | None,
    progress: type | None,
) -> Path:
    try:
        return _download(repo_id, revision, name, local_dir=local_dir, progress=progress)
    except _NotCached as exc:
        raise _missing_hub(repo_id, revision, name, str(exc), flag, model) from None
    except _NotInRepo:
        instead = f"pass {flag} with a local copy" if flag else "pass a local copy"
        raise ModelError(
            f"{repo_id} at revision {revision} has no file {name}; {instead} of the model instead"
        ) from None


def _git_blob_sha1(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as handle:
        while block := handle.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _server_etag(local: Path, local_dir: Path | None, name: str) -> str | None:
    """The hub's ETag of a downloaded file: sha256 (LFS files) or git blob sha1 (others)."""
    if local_dir is None:
        if local.is_symlink() and local.parent.parent.name == "snapshots":
            return local.resolve().name  # huggingface_hub names cache blobs by their ETag
        return None
    try:
        from huggingface_hub._local_folder import read_download_metadata

        metadata = read_download_metadata(local_dir=local_dir, filename=name)
    except (ImportError, OSError, ValueError):
        return None
    return metadata.etag if metadata is not None else None


def remove_download(local: Path) -> None:
    """Delete a downloaded file (and, in the Hugging Face cache, the blob it points to)."""
    try:
        if local.is_symlink():
            target = local.resolve()
            local.unlink()
            target.unlink(missing_ok=True)
        else:
            local.unlink(missing_ok=True)
    except OSError:
        pass


def _verified(
    local: Path,
    repo_id: str,
    revision: str,
    name: str,
    sha256: str | None,
    local_dir: Path | None = None,
) -> str:
    """Verify a downloaded hub file (pinned sha256, the hub's ETag, first-use record).

    A file that fails is removed (it came from the hub into our cache or download folder)
    and the next run downloads it again. Records are keyed by the snapshot's commit.
    """
    commit = local.parent.name if local.parent.parent.name == "snapshots" else revision
    record = record_path(repo_id, commit, name)
    what = f"{repo_id}@{commit}/{name}"
    try:
        actual = sha256_file(local)
        if sha256 is None:
            etag = _server_etag(local, local_dir, name)
            if etag and re.fullmatch(r"[0-9a-f]{64}", etag) and etag != actual:
                raise ModelError(
                    f"{local}: sha256 {actual} differs from {etag} announced by the hub for "
                    f"{what}; the download is damaged"
                )
            if etag and re.fullmatch(r"[0-9a-f]{40}", etag) and etag != _git_blob_sha1(local):
                raise ModelError(
                    f"{local}: content differs from git blob {etag} announced by the hub for "
                    f"{what}; the download is damaged"
                )
        return verify_sha256(local, sha256, record, what, actual=actual)
    except ModelError as exc:
        remove_download(local)
        raise ModelError(f"{exc}; removed it: run again to download it afresh") from None


def _find_weights(
    repo_id: str,
    revision: str,
    *,
    flag: str | None,
    model: str | None,
    local_dir: Path | None,
    progress: type | None,
) -> str:
    """The first of the usual weight file names the repository has (or the cache holds)."""
    not_cached = None
    for name in WEIGHT_CANDIDATES:
        try:
            _download(repo_id, revision, name, local_dir=local_dir, progress=progress)
            return name
        except _NotInRepo:
            continue
        except _NotCached as exc:
            not_cached = not_cached or str(exc)
    if not_cached is not None:
        names = " or ".join(WEIGHT_CANDIDATES)
        raise _missing_hub(repo_id, revision, names, not_cached, flag, model)
    raise ModelError(f"{repo_id} at revision {revision} has none of {', '.join(WEIGHT_CANDIDATES)}")


def index_shards(index: Path) -> list[str]:
    try:
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelError(f"{index}: unreadable shard index ({exc})") from None


def fetch_files(
    repo_id: str,
    revision: str,
    files: dict[str, str | None],
    *,
    flag: str | None,
    model: str | None = None,
) -> Path:
    """Fetch and verify hub files pinned to ``revision``; return the local folder holding them.

    ``files`` maps file names to their sha256, or None where none is known (the first
    download's sha256 is then recorded and enforced from then on).
    """
    folder, _ = fetch_hub(repo_id, revision, files, flag=flag, model=model)
    return folder


# --------------------------------------------------------------------------- URL files


def url_cache_path(url: str) -> Path:
    """Where ``fetch_url`` keeps the file downloaded from ``url``."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    return cache_root() / "urls" / key / name


def fetch_url(
    url: str,
    sha256: str | None,
    *,
    flag: str | None,
    model: str | None = None,
    dest: Path | None = None,
    progress: type | None = None,
) -> Path:
    """Fetch one file by URL into the cache (or to ``dest``) and verify it.

    Verified against the pinned sha256, else the first-use record next to the file. Offline
    (``HF_HUB_OFFLINE``) or without network, a file not yet here raises ``ModelsUnavailable``.
    A file that fails verification is removed.
    """
    from virnucpro.models import netprobe

    path = dest or url_cache_path(url)
    record = path.with_name(path.name + ".sha256") if dest is None else _url_record(url)
    if not path.is_file():
        reason = "HF_HUB_OFFLINE is set" if is_offline() else netprobe.unreachable(url)
        if reason is None:
            try:
                _download_url(url, path, progress)
            except (OSError, ValueError) as exc:
                reason = _first_line(exc)
            except Exception as exc:  # noqa: BLE001 - HTTP errors of huggingface_hub's client
                reason = f"{type(exc).__name__}: {_first_line(exc)}"
        if reason is not None:
            what = f"{model or path.name}: {url}"
            raise ModelsUnavailable([Missing(what, model, flag)], [reason])
    try:
        with open(path, "rb") as handle:
            if handle.read(64).startswith(b"version https://git-lfs"):
                raise ModelError(f"{path}: a Git LFS pointer, not the file itself ({url})")
        verify_sha256(path, sha256, record, url)
    except ModelError as exc:
        path.unlink(missing_ok=True)
        raise ModelError(f"{exc}; removed it: run again to download it afresh") from None
    return path


def _url_record(url: str) -> Path:
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = url.rstrip("/").rsplit("/", 1)[-1] or "download"
    return cache_root() / "checksums" / "urls" / key / f"{name}.sha256"


def _download_url(url: str, path: Path, progress: type | None) -> None:
    """Download under a file lock, resuming a partial ``.incomplete`` file, then rename."""
    from filelock import FileLock
    from huggingface_hub.file_download import http_get

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".incomplete")
    with FileLock(str(path.with_name(path.name + ".lock"))):
        if path.is_file():  # another process finished it while we waited
            return
        with open(partial, "ab") as out:
            http_get(url, out, resume_size=out.tell(), tqdm_class=progress)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)


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
    flag: str | None = "--esm-model",
) -> EmbedderSpec:
    """Find, fetch and verify an ESM-2 model once; return the spec every worker loads.

    Accepts a fair-esm name (``esm2_t36_3B_UR50D``) or its hub id (pinned revision), another
    hub id (``owner/name`` or ``owner/name@revision``), a local Hugging Face folder or a local
    fair-esm ``.pt`` file. Geometry and requested layers are checked here, before any worker.
    """
    from virnucpro.models.base import PRECISIONS, EmbedderSpec
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
        weights, hashes = fetch_hub(
            repo_id,
            revision,
            files_map,
            flag=flag,
            need_weights=True,
            model=entry[0] if entry is not None else None,
        )
        revision = weights.name if weights.parent.name == "snapshots" else revision
        chosen = []
        for file in hf_weight_files(weights):
            digest = hashes.get(file.name) or verify_sha256(
                file, None, record_path(repo_id, revision, file.name), f"{repo_id}/{file.name}"
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
