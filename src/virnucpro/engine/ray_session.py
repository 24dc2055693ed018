"""Connecting to Ray: join a cluster or start a private local instance, and list its GPUs.

Ray is optional (``pip install 'virnucpro[ray]'``) and imported lazily through ``import_ray``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from contextlib import contextmanager
from typing import Any

from virnucpro.errors import VirnucproError

RAY_TMPDIR_ENV = "VIRNUCPRO_RAY_TMPDIR"  # Ray's temporary files (sessions, sockets, logs)
# Only unit positions and small statistics travel through Ray; vectors go to unit files.
OBJECT_STORE_BYTES = 256 * 1024**2


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise VirnucproError(
            "--backend ray needs Ray, which is not installed: pip install 'virnucpro[ray]'"
        ) from None
    return ray


def one_line(text: str, limit: int = 300) -> str:
    line = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return line if len(line) <= limit else line[: limit - 3] + "..."


AUTH_ENV = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")
_TOKEN: list[str] = []


def _process_token() -> str:
    """One random token per process (Ray caches the token it has seen)."""
    if not _TOKEN:
        _TOKEN.append(secrets.token_hex(32))
    return _TOKEN[0]


def _physical_gpus(devices: list[str]) -> list[str]:
    """Physical GPU ids of ``cuda:N`` entries, N counted in this process's visible list."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    listed = [v.strip() for v in visible.split(",")] if visible else None
    ordinals = [int(d.split(":", 1)[1]) if ":" in d else 0 for d in devices if d.startswith("cuda")]
    return [listed[i] if listed else str(i) for i in ordinals]


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit():
        return  # "auto", ray://... : left to Ray
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConnectionError(f"nothing answers at {address} ({exc.strerror or exc})") from None


@contextmanager
def _visible_gpus(ids: list[str]):
    """Expose exactly ``ids`` to a Ray instance started inside this block."""
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    if ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


class RaySession:
    """Joins a Ray cluster (``address``) or starts a private local instance sized for the actors.

    Only what this session opened is closed: a driver connected by someone else stays
    connected, a cluster we joined keeps running, a local instance we started is stopped.
    Ray's temporary files go under ``$VIRNUCPRO_RAY_TMPDIR`` when it is set (else Ray's own
    default: ``$RAY_TMPDIR`` or /tmp/ray).
    """

    def __init__(self, ray: Any, address: str | None, cpus: int, devices: list[str]) -> None:
        self.ray = ray
        self.address = address
        self.cpus = cpus
        self.devices = devices
        self.owned = False
        self._saved_env: dict[str, str | None] = {}

    def open(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        kwargs: dict = {"log_to_driver": False, "logging_level": logging.WARNING}
        temp_dir = os.environ.get(RAY_TMPDIR_ENV)
        if temp_dir:
            kwargs["_temp_dir"] = os.path.abspath(temp_dir)
        where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
        try:
            if self.address:
                _check_reachable(self.address)
                ray.init(address=self.address, **kwargs)
            else:
                self._provide_token()
                gpus = _physical_gpus(self.devices)
                with _visible_gpus(gpus):
                    ray.init(
                        address="local",
                        num_cpus=self.cpus,
                        num_gpus=len(gpus),
                        include_dashboard=False,
                        object_store_memory=OBJECT_STORE_BYTES,
                        **kwargs,
                    )
        except (ConnectionError, RuntimeError, ValueError, OSError) as exc:
            hint = ""
            if "AF_UNIX path length" in str(exc):
                hint = f" (set {RAY_TMPDIR_ENV} to a shorter local directory)"
            raise VirnucproError(f"cannot start or join {where}: {one_line(exc)}{hint}") from None
        self.owned = True

    def _provide_token(self) -> None:
        """Keep Ray's token authentication on without it saving a token in ``~/.ray``.

        A new local instance enables token authentication and, when no token is configured,
        writes one to ``~/.ray/auth_token``; we hand it a process-wide token in the
        environment instead (restored on close).
        """
        configured = any(os.environ.get(k) for k in (*AUTH_ENV, "RAY_AUTH_TOKEN_PATH"))
        if configured or os.path.exists(os.path.expanduser("~/.ray/auth_token")):
            return
        self._saved_env = {k: os.environ.get(k) for k in AUTH_ENV}
        os.environ["RAY_AUTH_TOKEN"] = _process_token()

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()
            self.owned = False
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env = {}


def cluster_devices(address: str, workers: int | None = None) -> list[str]:
    """One ``cuda:i`` entry per GPU of a running Ray cluster (at most ``workers``), else CPU.

    Meant for ``--devices auto --backend ray --ray-address ...``: the driver may have fewer
    GPUs than the cluster. Without any GPU, ``workers`` CPU actors (default 1).
    """
    ray = import_ray()
    session = RaySession(ray, address, cpus=0, devices=[])
    session.open()
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
    finally:
        session.close()
    if gpus:
        return [f"cuda:{i}" for i in range(gpus if workers is None else min(workers, gpus))]
    return ["cpu"] * (workers or 1)
