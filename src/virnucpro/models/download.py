"""Pre-stage models: ``virnucpro download`` / ``virnucpro models`` (and their Python calls).

Hub files go through ``huggingface_hub.hf_hub_download`` at the pinned revision (its locks,
its resume of a dropped connection); the classifiers by URL (a lock and a resumable
``.incomplete`` file). Every file is verified (pinned sha256, the hub's ETag, else a
first-use record) and a file that fails is removed.

Without ``dest`` the models go where every command looks by default: the Hugging Face cache
(``HF_HOME`` / ``HF_HUB_CACHE``) and ``$VIRNUCPRO_CACHE`` for the classifiers. With ``dest``
they go to a plain models folder (``models_dir.py``) that ``--models-dir`` reads.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from virnucpro.errors import ModelError
from virnucpro.models import hub
from virnucpro.models.catalog import CatalogModel, select
from virnucpro.models.missing import ModelsUnavailable
from virnucpro.models.models_dir import (
    check_model,
    models_dir_from,
    read_manifest,
    record_model,
)


@dataclass
class Downloaded:
    """One model, present and verified."""

    model: CatalogModel
    path: Path  # its folder (hub models) or file (classifiers)
    files: dict[str, dict] = field(default_factory=dict)  # relative name -> sha256, size, pinned

    @property
    def size(self) -> int:
        return sum(meta["size"] for meta in self.files.values())


class _Lines:
    """A stream for tqdm that turns each redraw into one line (logs of batch jobs)."""

    def __init__(self, stream) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.replace("\r", "").strip()
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_class(quiet: bool = False) -> type:
    """A tqdm class for huggingface_hub: bytes, rate and ETA on stderr.

    On a terminal it redraws; otherwise it writes one line at most every 30 s (and at the
    end). ``quiet``: no bar.
    """
    from tqdm import tqdm

    terminal = sys.stderr.isatty()

    class Bar(tqdm):
        def __init__(self, *args, **kwargs) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = quiet
            kwargs.setdefault("unit", "B")
            kwargs.setdefault("unit_scale", True)
            kwargs.setdefault("unit_divisor", 1024)
            if terminal:
                kwargs["file"] = sys.stderr
            else:
                kwargs.update(file=_Lines(sys.stderr), mininterval=30.0, ascii=True, ncols=100)
            super().__init__(*args, **kwargs)

    return Bar


def _fetch(model: CatalogModel, dest: Path | None, bar: type) -> Downloaded:
    if model.hub is not None:
        local_dir = dest / model.path if dest is not None else None
        folder, hashes = hub.fetch_hub(
            model.hub.repo_id,
            model.hub.revision,
            model.hub.files,
            flag=None,
            need_weights=model.kind == "esm2",
            model=model.name,
            local_dir=local_dir,
            progress=bar,
        )
        files = {
            f"{model.path}/{name}": {
                "sha256": digest,
                "size": (folder / name).stat().st_size,
                "pinned": model.hub.files.get(name) is not None,
            }
            for name, digest in hashes.items()
        }
        return Downloaded(model, folder, files)
    assert model.url is not None
    target = dest / model.path if dest is not None else None
    path = hub.fetch_url(
        model.url.url, model.url.sha256, flag=None, model=model.name, dest=target, progress=bar
    )
    digest = hub.sha256_file(path)
    meta = {"sha256": digest, "size": path.stat().st_size, "pinned": model.url.sha256 is not None}
    return Downloaded(model, path, {model.path: meta})


def _manifest_entry(done: Downloaded) -> dict:
    model = done.model
    entry = {"kind": model.kind, "path": model.path, "files": done.files}
    if model.hub is not None:
        entry.update(source="hub", repo_id=model.hub.repo_id, revision=model.hub.revision)
    else:
        entry.update(source="url", url=model.source)
    entry["downloaded"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return entry


def download_models(
    models: str | list[str] | None = None,
    dest: str | Path | None = None,
    *,
    quiet: bool = True,
    log=None,
) -> list[Downloaded]:
    """Fetch and verify every pinned file of ``models`` (default: what predict uses).

    ``models``: names (``esm2_t33_650M_UR50D``, ``DNABERT-S``, ``classifier-500``), comma
    separated or a list, or ``"all"``. ``dest``: a models folder (default
    ``$VIRNUCPRO_MODELS``, else the Hugging Face cache and ``$VIRNUCPRO_CACHE``). Files
    already there are verified, not fetched again. Raises ``ModelsUnavailable`` when the
    network cannot be reached and ``ModelError`` for a file that fails verification.
    """
    chosen = select(models)
    folder = models_dir_from(dest)
    bar = progress_class(quiet)
    done = []
    for model in chosen:
        started = time.monotonic()
        if log is not None:
            where = folder / model.path if folder is not None else "the cache"
            log(f"{model.name}: {model.source} -> {where}")
        try:
            result = _fetch(model, folder, bar)
        except ModelsUnavailable:
            raise
        except ModelError as exc:  # a damaged file was removed: fetch it once more
            if log is not None:
                log(f"{model.name}: {exc}")
            result = _fetch(model, folder, bar)
        if folder is not None:
            record_model(folder, model.name, _manifest_entry(result))
        if log is not None:
            pinned = sum(meta["pinned"] for meta in result.files.values())
            log(
                f"{model.name}: {len(result.files)} file(s), {human_size(result.size)}, sha256 "
                f"verified ({pinned} pinned, {len(result.files) - pinned} recorded at first "
                f"download) in {time.monotonic() - started:.1f} s: {result.path}"
            )
        done.append(result)
    return done


def human_size(size: int | None) -> str:
    """``1.2 GB`` style (powers of 1000, as disks are sold)."""
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class ModelStatus:
    """One line of ``virnucpro models``."""

    name: str
    state: str  # "present", "missing", "incomplete", "damaged"
    size: int | None
    checksum: str  # e.g. "ok (2 pinned, 1 recorded)", "mismatch: config.json", "-"
    path: str


def _cache_status(model: CatalogModel) -> ModelStatus:
    if model.url is not None:
        path = hub.url_cache_path(model.url.url)
        if not path.is_file():
            return ModelStatus(model.name, "missing", None, "-", str(path))
        record = path.with_name(path.name + ".sha256")
        return _single_status(model, path, model.url.sha256, record)
    assert model.hub is not None
    repo = "models--" + model.hub.repo_id.replace("/", "--")
    snapshot = hub.hub_cache_dir() / repo / "snapshots" / model.hub.revision
    names = dict(model.hub.files)
    for index in [n for n in names if n.endswith(".index.json")]:
        if (snapshot / index).is_file():
            names.update(dict.fromkeys(hub.index_shards(snapshot / index)))
    if model.kind == "esm2" and not any(n in hub.WEIGHT_CANDIDATES for n in names):
        present = [n for n in hub.WEIGHT_CANDIDATES if (snapshot / n).is_file()]
        names.update(dict.fromkeys(present[:1]) or {"model weights": None})
    return _files_status(model, snapshot, names)


def _single_status(model: CatalogModel, path: Path, pinned: str | None, record: Path):
    actual = hub.sha256_file(path)
    expected = pinned
    if expected is None and record.is_file():
        expected = (record.read_text().split() or [""])[0]
    if expected is None:
        checksum = "not recorded yet"
    elif actual == expected:
        checksum = "ok (pinned)" if pinned else "ok (recorded)"
    else:
        return ModelStatus(model.name, "damaged", path.stat().st_size, "MISMATCH", str(path))
    return ModelStatus(model.name, "present", path.stat().st_size, checksum, str(path))


def _files_status(model: CatalogModel, folder: Path, names: dict) -> ModelStatus:
    assert model.hub is not None
    size, missing, bad, pinned, recorded, unrecorded = 0, [], [], 0, 0, 0
    for name, sha in names.items():
        path = folder / name
        if not path.is_file():
            missing.append(name)
            continue
        size += path.stat().st_size
        actual = hub.sha256_file(path)
        record = hub.record_path(model.hub.repo_id, model.hub.revision, name)
        expected = sha or ((record.read_text().split() or [""])[0] if record.is_file() else None)
        if expected is None:
            unrecorded += 1
        elif actual != expected:
            bad.append(name)
        else:
            pinned, recorded = pinned + (sha is not None), recorded + (sha is None)
    if bad:
        return ModelStatus(model.name, "damaged", size, "MISMATCH: " + ", ".join(bad), str(folder))
    if len(missing) == len(names):
        return ModelStatus(model.name, "missing", None, "-", str(folder))
    state = "incomplete" if missing else "present"
    checksum = f"ok ({pinned} pinned, {recorded} recorded)"
    if unrecorded:
        checksum += f", {unrecorded} not recorded yet"
    if missing:
        checksum += "; missing: " + ", ".join(missing)
    return ModelStatus(model.name, state, size, checksum, str(folder))


def _folder_status(model: CatalogModel, folder: Path, entry: dict | None) -> ModelStatus:
    path = folder / model.path
    if entry is None:
        state = "missing" if not path.exists() else "incomplete"
        note = "-" if state == "missing" else "not in the manifest (download again)"
        return ModelStatus(model.name, state, None, note, str(path))
    checks = check_model(folder, entry)
    size = sum(c.size or 0 for c in checks)
    bad = [c.relative for c in checks if c.status == "mismatch"]
    gone = [c.relative for c in checks if c.status == "missing"]
    if bad:
        return ModelStatus(model.name, "damaged", size, "MISMATCH: " + ", ".join(bad), str(path))
    if gone:
        return ModelStatus(model.name, "incomplete", size, "missing: " + ", ".join(gone), str(path))
    pinned = sum(bool(meta.get("pinned")) for meta in entry["files"].values())
    checksum = f"ok ({pinned} pinned, {len(checks) - pinned} recorded)"
    return ModelStatus(model.name, "present", size, checksum, str(path))


def model_status(
    models: str | list[str] | None = "all", dest: str | Path | None = None
) -> list[ModelStatus]:
    """Present/missing, size, checksum status and path of each model; no network.

    ``dest``: a models folder (default ``$VIRNUCPRO_MODELS``, else the caches).
    """
    folder = models_dir_from(dest)
    manifest = read_manifest(folder) if folder is not None else {}
    rows = []
    for model in select(models):
        if folder is not None:
            rows.append(_folder_status(model, folder, manifest.get(model.name)))
        else:
            rows.append(_cache_status(model))
    return rows


__all__ = ["Downloaded", "ModelStatus", "download_models", "model_status", "progress_class"]
