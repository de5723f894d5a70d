"""A hostile client on loopback: thousands of idle or half-sent connections from one source
address, reopened as soon as the server closes them; bounded in time and stopped by the
caller. Used by the connection-exhaustion test and, as a script, to measure a server:

    python -m tests.server.flood http://127.0.0.1:8080 --connections 5000 --seconds 60

prints how a fresh client from another address fares (health answers, their latency).
"""

from __future__ import annotations

import argparse
import errno
import resource
import selectors
import socket
import threading
import time
from urllib.parse import urlsplit

import requests

#: The three kinds of hostile connection, in turn: silent, headers cut short (and
#: trickled a byte at a time), and complete headers with a body that never arrives.
KINDS = ("idle", "half-headers", "half-body")
HALF_HEADERS = b"POST /api/v1/consume HTTP/1.1\r\nHost: flood\r\n"
HALF_BODY = (b"POST /api/v1/consume HTTP/1.1\r\nHost: flood\r\nContent-Type: application/json\r\n"
             b"X-Edge-Protocol: 1.0\r\nContent-Length: 100000\r\n\r\n{\"session\": ")


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files towards ``wanted`` (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


class ConnectionFlood:
    """Holds ``connections`` hostile connections from ``source`` to ``host:port`` in one thread."""

    def __init__(self, host: str, port: int, *, source: str = "127.0.0.2",
                 connections: int = 5000, seconds: float = 60.0, trickle: float = 2.0) -> None:
        self.target = (host, port)
        self.source = source
        self.wanted = connections
        self.seconds = seconds
        self.trickle = trickle  # seconds between trickled bytes of a half-sent request
        self.opened = 0  # connections opened in all (reopened ones count again)
        self.closed_by_server = 0
        self.peak_open = 0
        self._socks: dict[socket.socket, str] = {}
        self._selector = selectors.DefaultSelector()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="connection-flood", daemon=True)

    def start(self) -> ConnectionFlood:
        raise_open_files_limit(self.wanted + 1000)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)

    def __enter__(self) -> ConnectionFlood:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def open_now(self) -> int:
        return len(self._socks)

    def _open(self, index: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((self.source, 0))
            sock.connect_ex(self.target)
        except OSError:
            sock.close()
            return
        kind = KINDS[index % len(KINDS)]
        self._socks[sock] = kind
        self._selector.register(sock, selectors.EVENT_WRITE, kind)
        self.opened += 1

    def _drop(self, sock: socket.socket) -> None:
        self._selector.unregister(sock)
        del self._socks[sock]
        sock.close()

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        next_trickle = time.monotonic() + self.trickle
        index = 0
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                # Keep the flood full: reopen what the server closed, a batch per turn so
                # that the selector below is served too.
                for _ in range(min(500, self.wanted - len(self._socks))):
                    self._open(index)
                    index += 1
                self.peak_open = max(self.peak_open, len(self._socks))
                for key, events in self._selector.select(timeout=0.05):
                    self._on_event(key.fileobj, key.data, events)
                if time.monotonic() >= next_trickle:
                    next_trickle = time.monotonic() + self.trickle
                    for sock, kind in list(self._socks.items()):
                        if kind == "half-headers":
                            self._send(sock, b"X")  # one more byte of a header line
        finally:
            for sock in list(self._socks):
                self._drop(sock)
            self._selector.close()

    def _on_event(self, sock: socket.socket, kind: str, events: int) -> None:
        if events & selectors.EVENT_WRITE:  # connected (or failed to)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._drop(sock)
                return
            self._selector.modify(sock, selectors.EVENT_READ, kind)
            if kind != "idle":
                self._send(sock, HALF_HEADERS if kind == "half-headers" else HALF_BODY)
            return
        try:  # readable: the server answered or closed; either way it let go of us
            data = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed_by_server += 1
            self._drop(sock)

    def _send(self, sock: socket.socket, data: bytes) -> None:
        try:
            sock.send(data)
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                raise
            self.closed_by_server += 1
            self._drop(sock)


def probe_health(url: str, timeout: float = 2.0) -> float | None:
    """Seconds a new client (own connection) needs to get /health answered, None if not within
    ``timeout``."""
    started = time.monotonic()
    try:
        with requests.Session() as session:
            ok = session.get(f"{url}/api/v1/health", timeout=timeout).status_code == 200
    except requests.RequestException:
        return None
    return time.monotonic() - started if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--source", default="127.0.0.2")
    args = parser.parse_args()
    parts = urlsplit(args.url)
    with ConnectionFlood(parts.hostname, parts.port, source=args.source,
                         connections=args.connections, seconds=args.seconds) as flood:
        started = time.monotonic()
        while flood.running:
            took = probe_health(args.url)
            health = "NO ANSWER in 2s" if took is None else f"{took:.3f}s"
            print(f"t={time.monotonic() - started:5.1f}s open={flood.open_now:5d} "
                  f"opened={flood.opened:6d} closed_by_server={flood.closed_by_server:6d} "
                  f"health={health}", flush=True)
            time.sleep(1.0)


if __name__ == "__main__":
    main()
