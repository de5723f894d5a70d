"""Local control of edge workers over a Unix socket (works while the API is unreachable).

Each worker listens on ``<run dir>/<name>.sock`` (mode 0600, in a 0700 directory); when
the run directory is too deep for a Unix socket path (108 bytes), in a short directory of
this user under the temporary directory, named after the run directory.
A request is one JSON object on one line, the answer too::

    {"command": "status"}
    {"command": "maintenance", "on": true, "comment": "disk swap"}
    {"command": "stop", "drain_timeout": 60}

Answers are ``{"ok": true, "status": {...}}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import socketserver
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

#: Longest request or answer line.
MAX_LINE = 1 << 20
#: Longest usable AF_UNIX path (108 bytes with the terminating NUL on Linux).
_MAX_SOCKET_PATH = 100


def _short_root() -> Path:
    return Path(tempfile.gettempdir()) / f"edge-kombu-{os.getuid()}"


def short_dir(run_dir: Path) -> Path:
    """Where ``run_dir``'s sockets go when its own path is too long for one."""
    key = hashlib.sha1(os.fsencode(str(run_dir.absolute()))).hexdigest()[:12]
    return _short_root() / f"s-{key}"


def socket_path(run_dir: Path, name: str) -> Path:
    """The control socket of worker ``name``; a hash when the plain name would not fit."""
    safe = re.sub(r"[^A-Za-z0-9@._-]", "_", name)
    hashed = f"w-{hashlib.sha1(name.encode()).hexdigest()[:16]}.sock"
    candidates = [run_dir / hashed, short_dir(run_dir) / hashed]
    if safe == name:
        candidates.insert(0, run_dir / f"{safe}.sock")
    for path in candidates:
        if len(os.fsencode(str(path))) <= _MAX_SOCKET_PATH:
            return path
    raise ControlError(f"no control socket path under {_MAX_SOCKET_PATH} bytes for {name!r}; "
                       "set EDGE_KOMBU_RUN_DIR to a shorter directory")


class ControlError(Exception):
    """A control request could not be made or was refused."""


def request(path: Path, payload: dict, timeout: float = 15.0) -> dict:
    """Send one request to a worker's socket; return its ``status`` or raise ControlError."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(payload).encode() + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline(MAX_LINE)
    except OSError as exc:
        raise ControlError(f"worker socket {path}: {exc.strerror or exc}") from exc
    if not line:
        raise ControlError(f"worker socket {path} closed without an answer")
    answer = json.loads(line)
    if not answer.get("ok"):
        raise ControlError(answer.get("error") or "request refused")
    return answer["status"]


def live_sockets(run_dir: Path) -> list[tuple[Path, dict]]:
    """``(socket, status)`` of every worker answering in ``run_dir``."""
    found = []
    dirs = [d for d in (run_dir, short_dir(run_dir)) if d.is_dir()]
    for path in [p for d in dirs for p in sorted(d.glob("*.sock"))]:
        try:
            found.append((path, request(path, {"command": "status"}, timeout=5.0)))
        except (ControlError, ValueError):
            continue  # a worker killed without cleaning up
    return found


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        line = self.rfile.readline(MAX_LINE)
        if not line:
            return
        try:
            payload = json.loads(line)
            if not isinstance(payload, dict):
                raise ValueError("a request is a JSON object")
            answer = {"ok": True, "status": self.server.dispatch(payload)}
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - answer instead of dropping the connection
            log.exception("control request %r failed", line[:200])
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, dispatch: Callable[[dict], dict]) -> None:
        self.dispatch = dispatch
        super().__init__(path, _Handler)


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700) and refuse it if another user owns it or can write to it."""
    path.mkdir(exist_ok=True, mode=0o700)
    info = os.lstat(path)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise ControlError(f"{path} must be a directory of this user that others cannot write to")


class ControlServer:
    """Serves a worker's socket in a daemon thread; ``close`` removes the socket file."""

    def __init__(self, path: Path, dispatch: Callable[[dict], dict]) -> None:
        self.path = path
        self._dispatch = dispatch
        self._server: _Server | None = None

    def start(self) -> None:
        parent = self.path.parent
        if parent.parent == _short_root():  # shared temporary directory: refuse a squatter's
            _private_dir(parent.parent)
            _private_dir(parent)
        else:
            parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.exists() or self.path.is_symlink():
            try:
                request(self.path, {"command": "status"}, timeout=2.0)
            except (ControlError, ValueError):
                self.path.unlink()  # left behind by a worker that was killed
            else:
                raise ControlError(
                    f"another worker on this host already listens on {self.path}; "
                    "give this one another name (-n)"
                )
        old_umask = os.umask(0o077)
        try:
            self._server = _Server(str(self.path), self._dispatch)
        finally:
            os.umask(old_umask)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.5},
                         name="edge-kombu-control", daemon=True).start()

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
