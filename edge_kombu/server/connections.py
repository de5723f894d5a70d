"""Connection bounds of ``edge-kombu api``: a gunicorn gevent worker that a client holding
thousands of idle or half-sent connections cannot lock up.

gunicorn's gevent worker serves each connection in a greenlet from a pool of
``worker_connections``; once the pool is full it accepts nobody else. Stock, a silent
connection holds its greenlet for the whole keep-alive time (longer than the longest
long-poll) and a request whose body stops coming holds it for ever. This worker:

* gives a request ``request_timeout`` seconds from its first byte (from the accept for the
  first request of a connection) until its headers **and** body have arrived; a request
  that has not is dropped (headers) or answered 408 (body). The server-side wait of a
  long-poll starts after its body was read, so it is not cut;
* lets a connection idle between two requests up to gunicorn's ``keepalive`` (longer than
  any long-poll), so workers keep reusing their connections;
* caps the connections open at once from one source address (``max_connections_per_address``,
  0 for no cap: behind a reverse proxy every client has the proxy's address); a connection
  over the cap is answered 429 (plain HTTP; over TLS it is not answered) and closed
  ``REFUSED_HOLD`` seconds later, so that reconnecting at once gains the client nothing
  and costs the server little.

It also answers each response in one send where gunicorn makes two (:class:`OneSend`).

The capacity itself (``max_connections`` per process) and the open-files limit it needs are
set by :mod:`edge_kombu.server.serve`.
"""

from __future__ import annotations

import json
import logging
import resource
import ssl
import time
from collections import Counter
from dataclasses import dataclass, field

import gevent
from gevent.socket import wait_read
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker
from werkzeug.exceptions import RequestTimeout

log = logging.getLogger(__name__)

#: Open files a server process needs besides its connections (database, logs, listeners).
RESERVED_FILES = 256
#: Seconds between two warnings about one address over its connection cap.
REFUSAL_LOG_INTERVAL = 60.0
#: Seconds a refused connection is kept (answered, not read) before it is closed, so that
#: a client reconnecting at once cannot make the server spend its CPU on refusals...
REFUSED_HOLD = 10.0
#: ... while fewer than this share of the connection pool is spent on held refusals.
REFUSED_HOLD_SHARE = 0.5


def raise_open_files_limit(connections: int) -> int:
    """Raise the soft limit on open files (up to the hard limit) so that ``connections`` fit;
    returns how many connections fit under the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < wanted:
        soft = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft == resource.RLIM_INFINITY:
        return connections
    return max(1, min(connections, soft - RESERVED_FILES))


class RequestBodyTimeout(RequestTimeout):
    """408: the body of a request did not arrive in time (not an ``OSError``, so werkzeug
    does not take it for a disconnect)."""


class AddressCap:
    """How many connections each source address has open in this process, against a cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap  # 0: no cap
        self.open: Counter[str] = Counter()
        self._warned: dict[str, float] = {}

    def admit(self, address: str) -> bool:
        if self.cap and self.open[address] >= self.cap:
            self._warn(address)
            return False
        self.open[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]

    def _warn(self, address: str) -> None:
        now = time.monotonic()
        if now - self._warned.get(address, -REFUSAL_LOG_INTERVAL) >= REFUSAL_LOG_INTERVAL:
            self._warned[address] = now
            log.warning("refusing connections from %s: it has %d open, the cap per address "
                        "(EDGE_KOMBU_MAX_CONNECTIONS_PER_ADDRESS)", address, self.cap)


@dataclass
class Connection:
    """What the worker knows of one client connection while it serves it."""

    sock: object
    accepted_at: float = field(default_factory=time.monotonic)
    requests: int = 0  # requests read so far
    request_started: float = 0.0  # when the current request's first byte had arrived
    unreader: object = None  # gunicorn's read buffer of this connection (pipelined bytes)

    def __post_init__(self) -> None:
        self.request_started = self.accepted_at

    def has_buffered_bytes(self) -> bool:
        if self.unreader is not None and self.unreader.buf.getvalue():
            return True
        return isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0


class RequestArrival:
    """gunicorn's ``timeout_ctx`` around reading a request's headers.

    A fresh connection has ``limit`` seconds from its accept; a reused one may idle up to
    ``keepalive`` for its next request, which then has ``limit`` seconds from its first
    byte. Idle too long: StopIteration, which gunicorn takes for "close the connection".
    Headers too slow: a silent timeout, after which gunicorn closes the connection too.
    """

    def __init__(self, conn: Connection, *, limit: float, keepalive: float) -> None:
        self.conn = conn
        self.limit = limit
        self.keepalive = keepalive
        self.timer: gevent.Timeout | None = None

    def __enter__(self) -> RequestArrival:
        conn = self.conn
        if conn.requests:
            if not conn.has_buffered_bytes():
                try:
                    wait_read(conn.sock.fileno(), timeout=self.keepalive,
                              timeout_exc=TimeoutError("idle"))
                except OSError:  # idle too long, or the socket was closed meanwhile
                    raise StopIteration("idle longer than keepalive") from None
            conn.request_started = time.monotonic()
        conn.requests += 1
        remaining = conn.request_started + self.limit - time.monotonic()
        self.timer = gevent.Timeout(max(remaining, 0.001), False)
        self.timer.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        return self.timer.__exit__(exc_type, exc, tb)


class BodyDeadline:
    """Wraps gunicorn's body reader: every read ends by ``deadline``, or raises 408 to the
    application (``TimeoutError`` once the application is done: gunicorn, discarding the
    unread rest, then closes the connection)."""

    def __init__(self, reader, deadline: float, limit: float) -> None:
        self.reader = reader
        self.deadline = deadline
        self.limit = limit
        self.app_done = False

    def read(self, size):
        remaining = self.deadline - time.monotonic()
        message = (f"the request body did not arrive within {self.limit:g} s "
                   "(EDGE_KOMBU_REQUEST_TIMEOUT)")
        late = TimeoutError(message) if self.app_done else RequestBodyTimeout(message)
        # Past the deadline, what has arrived (or the end of the body) is still read.
        with gevent.Timeout(max(remaining, 0.001), late):
            return self.reader.read(size)


class OneSend:
    """A connection's socket, for one request, whose first two sends go out as one.

    gunicorn sends a response's status line and headers, then its body, with a
    ``sendall`` each: two system calls and two TCP segments per answer, ~10 % of the API
    server's time in the latency benchmark. The first send (the headers) is held and goes
    out with the second (the body, or its first part), or when the request is done
    (:meth:`flush`) if no second came. Any other way out of the socket (``sendfile``,
    ``send``, ``shutdown``, ``close``) sends what is held first, so bytes never reorder.
    """

    __slots__ = ("_sock", "_held", "_sends")

    def __init__(self, sock) -> None:
        self._sock = sock
        self._held: bytes | None = None
        self._sends = 0

    def sendall(self, data) -> None:
        self._sends += 1
        if self._sends == 1:
            self._held = bytes(data)
        elif self._held is not None:
            held, self._held = self._held, None
            self._sock.sendall(held + bytes(data))
        else:
            self._sock.sendall(data)

    def flush(self) -> None:
        """Send what is held (the request is done, or the socket is used another way)."""
        if self._held is not None:
            held, self._held = self._held, None
            self._sock.sendall(held)

    def sendfile(self, *args, **kwargs):
        self.flush()
        return self._sock.sendfile(*args, **kwargs)

    def send(self, *args, **kwargs):
        self.flush()
        return self._sock.send(*args, **kwargs)

    def shutdown(self, how) -> None:
        try:
            self.flush()
        except OSError:
            pass
        self._sock.shutdown(how)

    def close(self) -> None:
        try:
            self.flush()
        except OSError:
            pass
        self._sock.close()

    def __getattr__(self, name):
        return getattr(self._sock, name)


class EdgeGeventWorker(GeventWorker):
    """gunicorn's gevent worker with the bounds above; settings from the application's
    :class:`~edge_kombu.server.config.ServerConfig` (``self.app.config_obj``)."""

    def init_process(self) -> None:
        config = self.app.config_obj
        self.request_limit = config.request_timeout
        self.address_cap = AddressCap(config.max_connections_per_address)
        self.refusals_held = 0
        self.connections: dict[gevent.Greenlet, Connection] = {}
        super().init_process()

    def handle(self, listener, client, addr) -> None:
        if not self.alive:  # accepted just before the listener closed: nothing to serve
            client.close()
            return
        address = addr[0] if isinstance(addr, tuple) else "unix"
        if not self.address_cap.admit(address):
            self.refuse(client)
            return
        me = gevent.getcurrent()
        self.connections[me] = Connection(client)
        # Every send and receive of this connection is bounded (gunicorn's own handle()
        # would make the socket blocking without any timeout).
        client.settimeout(self.request_limit)
        try:
            AsyncWorker.handle(self, listener, client, addr)
        finally:
            del self.connections[me]
            self.address_cap.release(address)

    def refuse(self, client) -> None:
        """Answer 429 over the cap, then hold the connection a while: refusing costs the
        server more than reconnecting costs the client."""
        _answer_429(client, self.address_cap.cap)
        if self.refusals_held < self.worker_connections * REFUSED_HOLD_SHARE:
            self.refusals_held += 1
            try:
                gevent.sleep(REFUSED_HOLD)
            finally:
                self.refusals_held -= 1
        client.close()

    def handle_error(self, req, client, addr, exc) -> None:
        # gunicorn answers a request line or headers over its limits with an HTML page; the
        # API's errors are JSON that name the limit.
        if isinstance(exc, LimitRequestLine):
            _answer_error(client, 414, "URI Too Long", "uri_too_long",
                          f"the request line (path and query string) is too large ({exc}); "
                          f"at most {self.cfg.limit_request_line} bytes are allowed")
        elif isinstance(exc, LimitRequestHeaders):
            _answer_error(client, 431, "Request Header Fields Too Large", "headers_too_large",
                          f"request headers over the limit ({exc}); at most "
                          f"{self.cfg.limit_request_fields} fields of "
                          f"{self.cfg.limit_request_field_size} bytes are allowed")
        else:
            super().handle_error(req, client, addr, exc)

    def timeout_ctx(self) -> RequestArrival:
        return RequestArrival(self.connections[gevent.getcurrent()], limit=self.request_limit,
                              keepalive=self.cfg.keepalive)

    def handle_request(self, listener_name, req, sock, addr):
        conn = self.connections.get(gevent.getcurrent())
        if conn is None or req.body is None:
            return self._answer(listener_name, req, sock, addr)
        conn.unreader = req.unreader
        deadline = BodyDeadline(req.body.reader, conn.request_started + self.request_limit,
                                self.request_limit)
        req.body.reader = deadline
        try:
            return self._answer(listener_name, req, sock, addr)
        finally:
            deadline.app_done = True

    def _answer(self, listener_name, req, sock, addr):
        one_send = OneSend(sock)
        try:
            return super().handle_request(listener_name, req, one_send, addr)
        finally:
            one_send.flush()


def _answer_error(client, status: int, reason: str, error: str, message: str,
                  headers: bytes = b"") -> None:
    """Answer ``status`` with the API's JSON error body (``headers``: further header
    lines, each ending in CRLF), then the connection closes."""
    body = json.dumps({"error": error, "message": message}).encode()
    try:
        client.sendall(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n%s"
                       b"Connection: close\r\nContent-Length: %d\r\n\r\n"
                       % (status, reason.encode(), headers, len(body)) + body)
    except OSError:
        pass


def _answer_429(client, cap: int) -> None:
    """Answer 429 on a plain connection (a TLS one gets no handshake, hence no answer)."""
    if isinstance(client, ssl.SSLSocket):
        return
    try:
        client.settimeout(1.0)
    except OSError:
        return
    _answer_error(client, 429, "Too Many Requests", "too_many_requests",
                  f"too many connections from your address (at most {cap} at once)",
                  headers=b"Retry-After: %d\r\n" % REFUSED_HOLD)
