"""Claiming an output directory: it is ours, and only one run uses it at a time.

``OUT/.virnucpro-run.json``  the marker, written when virnucpro creates (or first fills an
                             empty) OUT: which command made it, version, time
``OUT/.virnucpro.lock``      an advisory lock (``fcntl.flock``) held for the whole run, with
                             the holder's pid, host, command and start time in it

OUT must be absent, empty or a run directory of the same command; anything else is refused
(even with ``--restart``) naming what is there. Symbolic links under OUT are refused, never
followed. A second run on a locked OUT stops at once naming the holder; a lock file left by a
dead process is taken over. Under the lock, temporary files left by killed runs
(``.NAME.tmp-PID``, see ``io/atomic.py``) are removed. Claims nest: a process that holds OUT
may claim it again (the engine job inside ``virnucpro embed``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

from virnucpro._version import __version__
from virnucpro.errors import VirnucproError
from virnucpro.io.atomic import atomic_write_json
from virnucpro.io.pids import pid_alive

MARKER = ".virnucpro-run.json"
LOCK = ".virnucpro.lock"
_TEMP = re.compile(r"^\..+\.(tmp|old)-(\d+)$")
_SKIP_CLEAN = {"units", "index"}  # their own writers clean these (unitfile.py, index.py)
_SHOWN = 5
# CLI command -> the command a run directory belongs to (merge works on embed's directories)
COMMANDS = {
    "embed": "embed",
    "merge": "embed",
    "predict": "predict",
    "translate": "translate",
    "selfcheck": "selfcheck",
}

log = logging.getLogger("virnucpro.engine")
_held: dict[str, list] = {}  # resolved OUT -> [command, depth] for claims of this process


class RunDirError(VirnucproError):
    """An output directory that is not ours, is in use, or whose records are damaged."""


def read_record(path: Path, what: str = "run record") -> dict:
    """A JSON run record; a damaged one is a one-line error suggesting ``--restart``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise RunDirError(
            f"{path}: unreadable {what} ({reason}); re-run with --restart to discard this "
            "run directory's results, or choose another output directory"
        ) from None


def _made_by(out: Path) -> str | None:
    """The command an earlier virnucpro (before markers) left in ``out``, if any."""
    if (out / "work" / "job.json").is_file():
        return "embed"
    if (out / "stages" / "translate" / "done.json").is_file():
        return "predict"
    return None


def _check_owner(out: Path, command: str, restart: bool) -> bool:
    """Refuse what is not ours; write the marker where needed. True when OUT was created."""
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a directory")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if marker.is_symlink():
        raise RunDirError(f"{marker} is a symbolic link; virnucpro never follows links in OUT")
    if marker.exists():
        try:
            owner = read_record(marker, "run directory marker").get("command")
        except RunDirError:
            if not restart:
                raise
            owner = command  # our own marker, damaged: --restart rewrites it
            _write_marker(marker, command)
        if owner != command:
            raise RunDirError(
                f"{out} is a run directory of `virnucpro {owner}`, not of `virnucpro "
                f"{command}`; nothing was touched. Choose another output directory"
            )
        return created
    entries = sorted(
        p.name
        for p in out.iterdir()
        if not _TEMP.match(p.name) and not p.name.startswith(LOCK) and not _empty_tree(p)
    )
    legacy = _made_by(out)
    if entries and legacy is None:
        shown = ", ".join(entries[:_SHOWN]) + (", ..." if len(entries) > _SHOWN else "")
        raise RunDirError(
            f"{out} exists and is not a virnucpro run directory (it holds {len(entries)} "
            f"entr{'y' if len(entries) == 1 else 'ies'}: {shown}); nothing was touched "
            "(--restart does not change this). Choose a new or empty output directory"
        )
    if legacy is not None and legacy != command:
        raise RunDirError(
            f"{out} is a run directory of `virnucpro {legacy}`, not of `virnucpro {command}`; "
            "nothing was touched. Choose another output directory"
        )
    _write_marker(marker, command)
    return created


def _empty_tree(path: Path) -> bool:
    """A folder holding only empty folders (as a workflow manager makes for the outputs it
    expects, e.g. Snakemake's ``OUT/work/shards/``): nothing of the user's to protect."""
    if path.is_symlink() or not path.is_dir():
        return False
    return all(_empty_tree(child) for child in path.iterdir())


def _write_marker(marker: Path, command: str) -> None:
    atomic_write_json(
        marker,
        {
            "command": command,
            "virnucpro_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def _holder(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, UnicodeDecodeError, ValueError):
        return {}


def _in_use(out: Path, holders: list[dict]) -> RunDirError:
    described = []
    for holder in holders or [{}]:
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        what = f"`virnucpro {holder['command']}`, " if holder.get("command") else ""
        shard = f"shard {holder['shard']}, " if holder.get("shard") else ""
        since = f"since {holder['started']}" if holder.get("started") else "start unknown"
        described.append(f"{what}{shard}{who}, {since}")
    return RunDirError(
        f"{out} is in use by another virnucpro run ({'; '.join(described)}); wait for it to "
        "finish or choose another output directory"
    )


def _holders(out: Path) -> list[dict]:
    """The recorded holders of ``out``'s locks (the whole-directory one, then shards)."""
    found = [_holder(out / LOCK)]
    found += [_holder(p) for p in sorted(out.glob(f"{LOCK}.*")) if not _TEMP.match(p.name)]
    return [h for h in found if h.get("pid")]


def _acquire(out: Path, name: str, command: str, *, shared: bool, shard: str | None) -> int:
    """Take lock file ``out/name`` (shared or exclusive); returns its file descriptor.

    An exclusive holder records itself in the file; a stale record (dead process on this
    host) is taken over.
    """
    path = out / name
    host = socket.gethostname()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            locked = True
        except BlockingIOError:
            os.close(fd)
            raise _in_use(out, _holders(out)) from None
        except OSError as exc:  # a file system without flock: fall back to the pid record
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                os.close(fd)
                raise
            locked = False
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # removed by its previous holder meanwhile: lock the new file
            os.close(fd)
            continue
        if shared:
            return fd
        previous = _holder(path)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            alive = previous.get("host") != host or pid_alive(int(previous["pid"]))
            if not locked and alive:
                os.close(fd)
                raise _in_use(out, [previous])
            log.info(
                "took over the stale lock of %s (pid %s on %s, no longer running)",
                path,
                previous.get("pid"),
                previous.get("host"),
            )
        record = {
            "pid": os.getpid(),
            "host": host,
            "command": command,
            "shard": shard,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return fd


def _release(path: Path, fd: int, *, remove: bool) -> None:
    try:
        if remove:
            path.unlink(missing_ok=True)  # no stale lock file after a clean exit
    finally:
        os.close(fd)  # closing releases the flock


def _scan(out: Path, *, clean: bool = True) -> None:
    """Refuse symbolic links under ``out``; remove temporaries of other processes.

    Called under the lock: no other run writes in ``out``, so a temporary of another pid
    is left by a run that was killed (workers' unit files and the index clean their own).
    """
    me = os.getpid()
    for folder, dirs, files in os.walk(out):
        base = Path(folder)
        cleanable = clean and base.name not in _SKIP_CLEAN
        for name in [*dirs, *files]:
            path = base / name
            if path.is_symlink():
                raise RunDirError(
                    f"{path} is a symbolic link; virnucpro never follows links inside its run "
                    "directory. Remove it (or choose another output directory)"
                )
            match = _TEMP.match(name)
            if cleanable and match and int(match.group(2)) != me:
                log.info("removing %s, left by a run that was stopped", path)
                if name in dirs:
                    dirs.remove(name)
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)


@contextmanager
def claim_run_dir(
    out: str | Path, command: str, *, restart: bool = False, shard: str | None = None
) -> Iterator[bool]:
    """Hold ``out`` for one run of ``command``; yields True when this claim created it.

    A whole run holds OUT alone. ``shard`` ("IofN"): job-array tasks share OUT with each
    other (each holds its own shard alone), never with a whole run. On a VirnucproError
    inside, an OUT this (whole-run) claim created is removed again: a bad input leaves no
    output directory behind.
    """
    out = Path(out)
    key = os.path.realpath(out)
    if key in _held:
        held_command = _held[key][0]
        if held_command != command:
            raise RunDirError(f"{out} is already held by `virnucpro {held_command}`")
        _held[key][1] += 1
        try:
            yield False
        finally:
            _held[key][1] -= 1
        return
    top = _first_missing(out)  # the outermost folder this claim creates (None: OUT exists)
    created = _check_owner(out, command, restart) and shard is None
    fds: list[tuple[Path, int, bool]] = []
    try:
        fds.append(
            (out / LOCK, _acquire(out, LOCK, command, shared=bool(shard), shard=shard), not shard)
        )
        if shard:
            name = f"{LOCK}.{shard}"
            fds.append((out / name, _acquire(out, name, command, shared=False, shard=shard), True))
    except BaseException:
        for _path, fd, _remove in fds:
            os.close(fd)
        if created:
            shutil.rmtree(top or out, ignore_errors=True)
        raise
    _held[key] = [command, 1]
    try:
        _scan(out, clean=not shard)  # other shards may be writing: clean only when alone
        yield created
    except VirnucproError:
        if created and not _holds_committed_work(out):
            shutil.rmtree(top or out, ignore_errors=True)
        raise
    finally:
        del _held[key]
        for path, fd, remove in reversed(fds):
            _release(path, fd, remove=remove and out.is_dir())


def _first_missing(out: Path) -> Path | None:
    """The outermost ancestor of ``out`` (or ``out``) that does not exist yet."""
    out = Path(os.path.abspath(out))
    if out.exists():
        return None
    top = out
    while not top.parent.exists():
        top = top.parent
    return top


def _holds_committed_work(out: Path) -> bool:
    """True when a run in ``out`` committed a unit (kept for the resume, e.g. after a full
    disk); only an OUT with nothing worth keeping is removed after an error."""
    return any(out.glob("**/work/units/*.h5"))


def shard_label(text: object) -> str | None:
    """``"I/N"`` or ``(I, N)`` as ``"IofN"``; None when not a shard (or malformed)."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in (text.split("/") if isinstance(text, str) else text))
    except (TypeError, ValueError):
        return None
    return f"{i}of{n}"


def command_claim(args) -> AbstractContextManager:
    """The claim of a CLI command's output directory (none for commands that only read)."""
    command = COMMANDS.get(getattr(args, "command", ""))
    out = getattr(args, "output_dir", None)
    if command is None or out is None:
        return nullcontext()
    return claim_run_dir(
        out,
        command,
        restart=bool(getattr(args, "restart", False)),
        shard=shard_label(getattr(args, "shard", None)),
    )
