"""A small Hugging Face Hub file server on 127.0.0.1, for the download tests.

It implements what ``huggingface_hub.hf_hub_download`` calls: ``HEAD`` and ``GET
/{repo}/resolve/{revision}/{filename}`` with ``X-Repo-Commit``, ``ETag`` (git blob sha1 of
regular files; sha256 of LFS files, also as ``X-Linked-Etag`` with ``X-Linked-Size``),
``Content-Length``, ``Accept-Ranges`` and ``Range`` requests (206), and the hub's error codes
(``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``). ``/raw/{name}`` serves plain
files (the classifiers' URLs). Faults on demand: drop the connection half-way through the
first ``GET`` of a file, serve damaged bytes, slow a file down. Every request is logged.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    range: str | None


@dataclass
class HubState:
    repos: dict[str, dict[str, dict[str, bytes]]] = field(default_factory=dict)  # repo->rev->file
    refs: dict[str, dict[str, str]] = field(default_factory=dict)  # repo -> ref -> commit
    raw: dict[str, bytes] = field(default_factory=dict)
    drop_first_get: set[str] = field(default_factory=set)  # file names
    corrupt: set[str] = field(default_factory=set)  # file names served damaged
    slow: dict[str, float] = field(default_factory=dict)  # file name -> seconds per body
    log: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: list[socket.socket] = field(default_factory=list)


class HubServer:
    """``with HubServer() as hub: hub.add_repo(...); os.environ["HF_ENDPOINT"] = hub.url``."""

    def __init__(self) -> None:
        self.state = HubState()
        state = self.state

        class Handler(_Handler):
            hub = state

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.state.lock:  # keep-alive connections would outlive the server otherwise
            for connection in self.state.connections:
                try:
                    connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def add_repo(
        self, repo_id: str, revision: str, files: dict[str, bytes], ref: str | None = None
    ) -> None:
        self.state.repos.setdefault(repo_id, {})[revision] = dict(files)
        if ref:
            self.state.refs.setdefault(repo_id, {})[ref] = revision

    def add_folder(self, repo_id: str, revision: str, folder: Path, ref: str | None = None):
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
        self.add_repo(repo_id, revision, files, ref)
        return files

    def gets(self, name: str) -> list[Request]:
        """The GET requests for files called ``name``."""
        with self.state.lock:
            return [r for r in self.state.log if r.method == "GET" and r.path.endswith("/" + name)]

    def requests(self) -> list[Request]:
        with self.state.lock:
            return list(self.state.log)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubState

    def setup(self) -> None:
        super().setup()
        with self.hub.lock:
            self.hub.connections.append(self.connection)

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def do_GET(self) -> None:
        self._serve(head=False)

    def _error(self, status: int, code: str, commit: str | None = None) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", code)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _serve(self, head: bool) -> None:
        hub = self.hub
        with hub.lock:
            hub.log.append(Request(self.command, self.path, self.headers.get("Range")))
        path = self.path.split("?", 1)[0]
        if path.startswith("/raw/"):
            name = path[len("/raw/") :]
            if name not in hub.raw:
                return self._error(404, "EntryNotFound")
            return self._send_file(name, hub.raw[name], {}, head)
        parts = path.lstrip("/").split("/")
        if len(parts) < 5 or parts[2] != "resolve":
            return self._error(404, "RepoNotFound")
        repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
        revisions = hub.repos.get(repo_id)
        if revisions is None:
            return self._error(404, "RepoNotFound")
        commit = hub.refs.get(repo_id, {}).get(revision, revision)
        if commit not in revisions:
            return self._error(404, "RevisionNotFound")
        files = revisions[commit]
        if filename not in files:
            return self._error(404, "EntryNotFound", commit)
        data = files[filename]
        headers = {"X-Repo-Commit": commit}
        if filename.endswith(LFS_SUFFIXES):
            sha = hashlib.sha256(data).hexdigest()
            headers.update(
                {"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data))}
            )
        else:
            headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self._send_file(filename, data, headers, head)

    def _send_file(self, name: str, data: bytes, headers: dict, head: bool) -> None:
        hub = self.hub
        if not head and name in hub.corrupt:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        start = 0
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes=") and not head:
            start = int(wanted[len("bytes=") :].split("-", 1)[0] or 0)
        body = data[start:]
        self.send_response(206 if start else 200)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body) if not head else len(data)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        drop = False
        with hub.lock:
            if name in hub.drop_first_get:
                hub.drop_first_get.discard(name)
                drop = True
        if drop:  # half the body, then the connection goes away
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        pieces = 8 if name in hub.slow else 1
        step = max(1, -(-len(body) // pieces))
        for offset in range(0, len(body), step):
            self.wfile.write(body[offset : offset + step])
            self.wfile.flush()
            if name in hub.slow:
                time.sleep(hub.slow[name] / pieces)
