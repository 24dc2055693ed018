"""One quick reachability probe per process before any model download.

Without network, huggingface_hub retries every file for tens of seconds. Before the first
download we send ONE ``HEAD`` (huggingface_hub's own HTTP session, so proxies and
certificates are honoured) with a short timeout, bounded by a hard deadline (a name lookup
that hangs is cut off too). Any HTTP answer means reachable. The first failure marks the
network unreachable for the rest of the process: every later download fails at once.

Timeout: ``$HF_HUB_ETAG_TIMEOUT`` seconds when set, else 3 s.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 3.0

_lock = threading.Lock()
_reachable: set[str] = set()
_down: str | None = None  # why the network is considered unreachable, once a probe failed


def probe_timeout() -> float:
    """Seconds one probe may take (``HF_HUB_ETAG_TIMEOUT`` or 3)."""
    try:
        value = float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or DEFAULT_TIMEOUT)
    except ValueError:
        value = DEFAULT_TIMEOUT
    return value if value > 0 else DEFAULT_TIMEOUT


def reset() -> None:
    """Forget earlier probe results (tests, long-lived processes after a network change)."""
    global _down
    with _lock:
        _reachable.clear()
        _down = None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _head(url: str, timeout: float, result: dict) -> None:
    try:
        from huggingface_hub.utils import get_session

        get_session().head(url, timeout=timeout, follow_redirects=False)
        result["ok"] = True
    except Exception as exc:  # noqa: BLE001 - any failure to get an answer means unreachable
        text = str(exc).strip().splitlines()
        result["error"] = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def unreachable(url: str) -> str | None:
    """None when ``url``'s server answers; else why not (and from then on for every URL)."""
    global _down
    origin = _origin(url)
    with _lock:
        if _down is not None:
            return _down
        if origin in _reachable:
            return None
    timeout = probe_timeout()
    result: dict = {}
    thread = threading.Thread(target=_head, args=(url, timeout, result), daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    with _lock:
        if result.get("ok"):
            _reachable.add(origin)
            return None
        reason = result.get("error") or f"no answer within {timeout:g} s"
        _down = f"{origin} is unreachable ({reason})"
        return _down
