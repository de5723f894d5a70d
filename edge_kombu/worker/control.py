"""Local control of edge workers (works while the API is unreachable).

Each worker answers on an endpoint in the run directory:

* ``<run dir>/<name>.sock``: a Unix socket (mode 0600, in a 0700 directory), where the
  platform has them. When the run directory is too deep for a socket path (108 bytes),
  the socket goes to a short directory of this user under the temporary directory,
  named after the run directory.
* ``<run dir>/<name>.ctl``: loopback TCP, for platforms without Unix sockets (Windows)
  or when ``EDGE_KOMBU_CONTROL=tcp``. The file (mode 0600) names the port and a secret
  that every request must carry, so only who can read the file can control the worker.

A request is one JSON object on one line, the answer too::

    {"command": "status"}
    {"command": "maintenance", "on": true, "comment": "disk swap"}
    {"command": "stop", "drain_timeout": 60}

Answers are ``{"ok": true, "status": {...}}`` or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import socketserver
import stat
import tempfile
import threading
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)

#: Longest request or answer line.
MAX_LINE = 1 << 20
#: Longest usable AF_UNIX path (108 bytes with the terminating NUL on Linux).
_MAX_SOCKET_PATH = 100
#: ``unix`` or ``tcp``: how workers are reached (default: unix where the platform has it).
ENV_CONTROL = "EDGE_KOMBU_CONTROL"
UNIX, TCP = "unix", "tcp"
_SUFFIX = {UNIX: ".sock", TCP: ".ctl"}


class ControlError(Exception):
    """A control request could not be made or was refused."""


def channel(env: Mapping[str, str] | None = None) -> str:
    """The control channel this host uses: ``EDGE_KOMBU_CONTROL`` or the platform's."""
    env = os.environ if env is None else env
    chosen = (env.get(ENV_CONTROL) or "").strip().lower()
    if chosen in _SUFFIX:
        return chosen
    if chosen:
        log.warning("%s=%r is neither %r nor %r; using the default", ENV_CONTROL, chosen,
                    UNIX, TCP)
    return UNIX if hasattr(socket, "AF_UNIX") else TCP


def _short_root() -> Path:
    return Path(tempfile.gettempdir()) / f"edge-kombu-{user_id()}"


def user_id() -> str:
    """This user, for names in shared directories (the uid where there is one)."""
    return str(os.getuid()) if hasattr(os, "getuid") else getpass.getuser()


def short_dir(run_dir: Path) -> Path:
    """Where ``run_dir``'s sockets go when its own path is too long for one."""
    key = hashlib.sha1(os.fsencode(str(run_dir.absolute()))).hexdigest()[:12]
    return _short_root() / f"s-{key}"


def endpoint(run_dir: Path, name: str, kind: str = UNIX) -> Path:
    """The control endpoint of worker ``name``: its socket, or its ``.ctl`` file for TCP;
    a hash of the name when the plain name is not a safe file name or would not fit."""
    safe = re.sub(r"[^A-Za-z0-9@._-]", "_", name)
    suffix = _SUFFIX[kind]
    hashed = f"w-{hashlib.sha1(name.encode()).hexdigest()[:16]}{suffix}"
    plain = [run_dir / f"{safe}{suffix}"] if safe == name else []
    if kind == TCP:
        return (plain or [run_dir / hashed])[0]
    for path in [*plain, run_dir / hashed, short_dir(run_dir) / hashed]:
        if len(os.fsencode(str(path))) <= _MAX_SOCKET_PATH:
            return path
    raise ControlError(f"no control socket path under {_MAX_SOCKET_PATH} bytes for {name!r}; "
                       "set EDGE_KOMBU_RUN_DIR to a shorter directory")


def _connect(path: Path, payload: dict, timeout: float) -> socket.socket:
    if path.suffix != _SUFFIX[TCP]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError:
            sock.close()
            raise
        return sock
    try:
        where = json.loads(path.read_text())
        port, secret = int(where["port"]), str(where["secret"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ControlError(f"worker endpoint {path} is unreadable: {exc}") from None
    payload["secret"] = secret
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def request(path: Path, payload: dict, timeout: float = 15.0) -> dict:
    """Send one request to a worker's endpoint; return its ``status`` or raise ControlError."""
    payload = dict(payload)
    try:
        with _connect(path, payload, timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(json.dumps(payload).encode() + b"\n")
            with sock.makefile("rb") as reader:
                line = reader.readline(MAX_LINE)
    except OSError as exc:
        raise ControlError(f"worker endpoint {path}: {exc.strerror or exc}") from exc
    if not line:
        raise ControlError(f"worker endpoint {path} closed without an answer")
    answer = json.loads(line)
    if not answer.get("ok"):
        raise ControlError(answer.get("error") or "request refused")
    return answer["status"]


def live_sockets(run_dir: Path) -> list[tuple[Path, dict]]:
    """``(endpoint, status)`` of every worker answering in ``run_dir``."""
    found = []
    dirs = [d for d in (run_dir, short_dir(run_dir)) if d.is_dir()]
    paths = sorted(p for d in dirs for suffix in _SUFFIX.values() for p in d.glob(f"*{suffix}"))
    for path in paths:
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
            self.server.check(payload)
            answer = {"ok": True, "status": self.server.dispatch(payload)}
        except (ValueError, KeyError, TypeError) as exc:
            answer = {"ok": False, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - answer instead of dropping the connection
            log.exception("control request %r failed", line[:200])
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        self.wfile.write(json.dumps(answer).encode() + b"\n")


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, dispatch: Callable[[dict], dict]) -> None:
        self.dispatch = dispatch
        super().__init__(path, _Handler)

    def check(self, payload: dict) -> None:
        """The socket's file mode decided who may connect."""


class _TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True

    def __init__(self, dispatch: Callable[[dict], dict]) -> None:
        self.dispatch = dispatch
        self.secret = secrets.token_urlsafe(32)
        super().__init__(("127.0.0.1", 0), _Handler)

    def check(self, payload: dict) -> None:
        given = payload.pop("secret", None)
        if not isinstance(given, str) or not hmac.compare_digest(given, self.secret):
            raise ValueError("wrong or missing control secret (read from the worker's "
                             ".ctl file, readable by its user only)")


def _private_dir(path: Path) -> None:
    """Create ``path`` (0700) and refuse it if another user owns it or can write to it."""
    path.mkdir(exist_ok=True, mode=0o700)
    info = os.lstat(path)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
            or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)):
        raise ControlError(f"{path} must be a directory of this user that others cannot write to")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only, atomically."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(partial, path)


class ControlServer:
    """Serves a worker's endpoint in a daemon thread; ``close`` removes its file."""

    def __init__(self, path: Path, dispatch: Callable[[dict], dict]) -> None:
        self.path = path
        self._dispatch = dispatch
        self._server: _UnixServer | _TcpServer | None = None

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
        if self.path.suffix == _SUFFIX[TCP]:
            server = self._server = _TcpServer(self._dispatch)
            _write_private(self.path, json.dumps({"port": server.server_address[1],
                                                  "secret": server.secret,
                                                  "pid": os.getpid()}))
        else:
            old_umask = os.umask(0o077)
            try:
                self._server = _UnixServer(str(self.path), self._dispatch)
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
