"""CLI commands ``virnucpro download`` and ``virnucpro models``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from virnucpro.models.missing import MODELS_ENV

MODELS_HELP = (
    "comma separated: ESM-2 names (esm2_t6_8M_UR50D ... esm2_t48_15B_UR50D), DNABERT-S, "
    "classifier-300, classifier-500, or all"
)


def add_download_commands(sub, common: argparse.ArgumentParser) -> None:
    download = sub.add_parser(
        "download",
        parents=[common],
        help="fetch the pinned models (for machines without internet)",
        description="Fetch every pinned file (revision and sha256) of the chosen models, verify "
        "it, and say what a compute node needs. Default: what predict uses (esm2_t36_3B_UR50D, "
        "DNABERT-S, classifier-300, classifier-500). Without --dest the files go to the Hugging "
        "Face cache (HF_HOME / HF_HUB_CACHE) and $VIRNUCPRO_CACHE; with --dest DIR to a plain "
        "folder that --models-dir DIR (or VIRNUCPRO_MODELS=DIR) reads. Re-running verifies what "
        "is there and fetches the rest.",
    )
    download.add_argument("--models", default=None, metavar="NAME,...|all", help=MODELS_HELP)
    download.add_argument(
        "--dest",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"a models folder (default ${MODELS_ENV}, else the caches)",
    )
    download.set_defaults(handler=_cmd_download)

    models = sub.add_parser(
        "models",
        parents=[common],
        help="list the models here: present or missing, size, checksum, path",
        description="List each known model: present, missing, incomplete or damaged; size; "
        "checksum status (every file is read); path. No network. Exit 1 when a file is damaged.",
    )
    models.add_argument("--models", default="all", metavar="NAME,...|all", help=MODELS_HELP)
    models.add_argument(
        "--dest",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"a models folder (default ${MODELS_ENV}, else the caches)",
    )
    models.set_defaults(handler=_cmd_models)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _cmd_download(args) -> int:
    from virnucpro.errors import ModelError
    from virnucpro.models.download import download_models, human_size
    from virnucpro.models.hub import cache_root, hub_cache_dir
    from virnucpro.models.missing import ModelsUnavailable
    from virnucpro.models.models_dir import models_dir_from

    log = (lambda _text: None) if args.quiet else _say
    try:
        done = download_models(args.models, args.dest, quiet=args.quiet, log=log)
    except ModelsUnavailable as exc:
        advice = (
            "Unset HF_HUB_OFFLINE to download."
            if any("HF_HUB_OFFLINE" in reason for reason in exc.reasons)
            else "Run `virnucpro download` where there is internet (e.g. a login node), or "
            "point HF_ENDPOINT at a reachable mirror."
        )
        raise ModelError(
            "cannot download "
            + ", ".join(m.model or m.what for m in exc.missing)
            + f": {'; '.join(exc.reasons)}\n{advice}"
        ) from None
    if args.quiet:
        return 0
    total = sum(d.size for d in done)
    names = ",".join(d.model.name for d in done)
    folder = models_dir_from(args.dest)
    print(
        f"{len(done)} model(s) present and verified ({human_size(total)}): {names}",
        file=sys.stderr,
    )
    if folder is not None:
        where = folder.resolve()
        print(
            f"A compute node needs only {where} (copy it, or put it on shared storage):\n"
            f"  virnucpro predict READS -o OUT --models-dir {where}\n"
            f"  or: export {MODELS_ENV}={where}   (every command then reads its models there)",
            file=sys.stderr,
        )
    else:
        print(
            "A compute node needs these caches at the same paths (shared storage), with no "
            "network access:\n"
            f"  export HF_HUB_CACHE={hub_cache_dir()}  VIRNUCPRO_CACHE={cache_root()}  "
            "HF_HUB_OFFLINE=1",
            file=sys.stderr,
        )
    return 0


def _cmd_models(args) -> int:
    from virnucpro.models.download import human_size, model_status

    rows = model_status(args.models, args.dest)
    header = ("model", "state", "size", "checksum", "path")
    table = [header] + [(r.name, r.state, human_size(r.size), r.checksum, r.path) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]))
    damaged = [r.name for r in rows if r.state == "damaged"]
    if damaged:
        print(
            f"error: damaged: {', '.join(damaged)}; run `virnucpro download --models "
            f"{','.join(damaged)}` (with the same --dest) to repair",
            file=sys.stderr,
        )
        return 1
    return 0
