"""The fault suite's harness (tests/integration/test_fault_suite.py): count executions per
task id, publish at a steady rate, cut the network, run a PostgreSQL of the test's own, and
say what came of it in one line.

Executions are counted by the task itself (``record`` in tests/celery_app.py and
tests/edge_tasks.py): each execution appends a start line and an end line to one file,
with ``O_APPEND`` so workers, threads and pool processes can share it:

    S <task id> <n> <worker hostname> <pid> <unix time>
    E <task id> <n> <worker hostname> <pid> <unix time>

This module is imported by the test process and, for :func:`record_execution`, by the
workers: it must not import Celery apps.
"""

from __future__ import annotations

import os
import pwd
import select
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import free_port, wait_for

# -- counting executions ------------------------------------------------------------------


def record_execution(path: str, task_id: str, n: int, hostname: str, seconds: float) -> None:
    """Body of the ``record`` tasks: a start line, ``seconds`` of work, an end line."""
    _append(path, f"S {task_id} {n} {hostname} {os.getpid()} {time.time():.6f}\n")
    if seconds:
        time.sleep(seconds)
    _append(path, f"E {task_id} {n} {hostname} {os.getpid()} {time.time():.6f}\n")


def _append(path: str, line: str) -> None:
    # One write() on an O_APPEND descriptor: lines of concurrent writers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Execution:
    task_id: str
    host: str
    pid: int
    started: float
    ended: float | None  # None: started and not (yet) finished


class Tally:
    """What the execution file says about the task ids a test published."""

    def __init__(self, path: Path, published: Callable[[], list[str]]) -> None:
        self.path = path
        self._published = published

    def executions(self) -> list[Execution]:
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        started: dict[tuple[str, int], list[tuple[str, float]]] = {}
        done: list[Execution] = []
        for line in lines:
            kind, task_id, _n, host, pid, at = line.split()
            key = (task_id, int(pid))
            if kind == "S":
                started.setdefault(key, []).append((host, float(at)))
            else:
                host, start = started[key].pop(0)
                done.append(Execution(task_id, host, int(pid), start, float(at)))
        running = [Execution(task_id, host, pid, start, None)
                   for (task_id, pid), opened in started.items() for host, start in opened]
        return done + running

    def runs(self) -> Counter:
        """Finished executions per task id."""
        return Counter(e.task_id for e in self.executions() if e.ended is not None)

    @property
    def published(self) -> int:
        return len(self._published())

    @property
    def completed(self) -> int:
        runs = self.runs()
        return sum(1 for task_id in set(self._published()) if runs[task_id])

    @property
    def lost(self) -> int:
        return self.published - self.completed

    @property
    def run_twice(self) -> int:
        """Task ids that finished more than once."""
        return sum(1 for n in self.runs().values() if n > 1)

    def all_done(self) -> bool:
        return self.lost == 0

    def in_flight(self, host: str) -> bool:
        return any(e.ended is None and e.host == host for e in self.executions())

    def started_on(self, host: str) -> int:
        return sum(1 for e in self.executions() if e.host == host)

    def recovery(self, since: float, host: str | None = None) -> float | None:
        """Seconds from ``since`` (the fault's end) until the first execution that started
        after it finished (on ``host``, if given); None if none did."""
        ends = [e.ended for e in self.executions()
                if e.ended is not None and e.started >= since and host in (None, e.host)]
        return min(ends) - since if ends else None


def report(name: str, tally: Tally, recovery: float | None) -> str:
    """Print and return the suite's line for one case."""
    seconds = "n/a" if recovery is None else f"{recovery:.1f}"
    line = (f"{name}: {tally.published} published, {tally.completed} completed, "
            f"{tally.lost} lost, {tally.run_twice} run twice, recovery {seconds} s")
    print(line)
    return line


def settle(tally: Tally, stored: Callable[[], int], timeout: float) -> bool:
    """Wait until every published task ran and the broker holds none of their messages
    (an ack that was lost shows up as a redelivery, hence a second run, only once the
    lease ran out). False after ``timeout``: the report then tells what is missing."""
    try:
        wait_for(lambda: tally.all_done() and stored() == 0, timeout=timeout, interval=0.2,
                 message="every task ran and every message was settled")
    except AssertionError:
        return False
    return True


def hold(seconds: float, check: Callable[[], object] | None = None) -> None:
    """Let a fault last ``seconds`` (the one deliberate wait of a case), checking that
    nothing else broke meanwhile (``check`` raises AssertionError)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if check is not None:
            check()
        time.sleep(min(0.2, left))


# -- publishing ---------------------------------------------------------------------------

#: kombu's retry of one publish through an outage: the transport resends it under the same
#: publish id (idempotent on the server), here for up to about a minute.
PUBLISH_RETRY = {"max_retries": 120, "interval_start": 0, "interval_step": 0.25,
                 "interval_max": 0.5}


def publisher_app(broker_url: str):
    """A Celery app publishing as tests/celery_app.py consumes (acks_late), no results."""
    from celery import Celery

    app = Celery("edge_fault_publisher", broker=broker_url, set_as_current=False)
    app.conf.update(task_acks_late=True, task_ignore_result=True)
    return app


class SteadyPublisher(threading.Thread):
    """Publishes ``count`` ``record`` tasks at ``rate`` per second from a thread, each
    retried through outages; ``ids`` holds those whose publish returned."""

    def __init__(self, app, path: Path, *, name: str, count: int, rate: float,
                 seconds: float = 0.0, task: str = "tests.celery_app.record",
                 queue: str | None = None) -> None:
        super().__init__(daemon=True, name=f"publisher-{name}")
        self.app, self.path, self.prefix = app, path, name
        self.count, self.rate, self.seconds = count, rate, seconds
        self.task, self.queue = task, queue
        self.ids: list[str] = []
        self.failed: list[tuple[str, BaseException]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        for n in range(self.count):
            if self._halt.wait(max(0.0, start + n / self.rate - time.monotonic())):
                return
            task_id = f"{self.prefix}-{n}"
            try:
                self.app.send_task(self.task, args=(str(self.path), n, self.seconds),
                                   task_id=task_id, queue=self.queue, retry=True,
                                   retry_policy=PUBLISH_RETRY)
            except Exception as exc:  # noqa: BLE001 - reported by the test, not lost silently
                self.failed.append((task_id, exc))
            else:
                self.ids.append(task_id)

    def finish(self, timeout: float) -> None:
        """Wait for the last publish; fail if it did not come or any publish failed."""
        self.join(timeout)
        assert not self.is_alive(), f"publisher {self.prefix} still busy after {timeout}s"
        assert not self.failed, f"publishes failed: {self.failed[:3]}"

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


# -- the network ----------------------------------------------------------------------------


class TcpProxy:
    """A loopback TCP proxy to ``127.0.0.1:target_port`` that the test can partition.

    ``partition()`` is a blackhole, as a partition looks from both ends, not a refusal:
    live connections stay open but nothing more is forwarded either way (what was read
    waits in the proxy, the rest in the kernel's buffers); new connections complete
    their handshake in the listen backlog and are not served, so a client's request
    hangs until its own timeout. ``heal()`` resumes forwarding where it stopped, as TCP
    does once its retransmissions get through, and serves the waiting connections; a
    side that closed meanwhile (the server timing a request out) is closed on the other
    side then. One thread accepts, two per connection pump; at most ``max_connections``.
    """

    POLL = 0.1

    def __init__(self, target_port: int, max_connections: int = 128) -> None:
        self.target = ("127.0.0.1", target_port)
        self.max_connections = max_connections
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._rejecting = False
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def partition(self, *, reset: bool = False) -> None:
        """Stop forwarding. ``reset``: a partition that answers, as a firewall rejecting
        or a middlebox that lost its connection state does: live connections are reset
        and new ones are accepted and reset at once, so the ends notice now rather than
        at their timeouts."""
        self._rejecting = reset
        self._forwarding.clear()
        if reset:
            with self._lock:
                live = list(self._sockets)
            for sock in live:
                _linger_zero(sock)
            self._close(*live)

    def heal(self) -> None:
        self._rejecting = False
        self._forwarding.set()

    def url(self, token: str) -> str:
        return f"edge+http://:{token}@127.0.0.1:{self.port}"

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def _open(self) -> bool:
        """Block while partitioned; False once stopped."""
        while not self._forwarding.wait(self.POLL):
            if self._stopped.is_set():
                return False
        return not self._stopped.is_set()

    def _accept(self) -> None:
        while self._rejecting or self._open():
            if not select.select([self.listener], [], [], self.POLL)[0]:
                continue
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._rejecting:
                _linger_zero(client)
                client.close()
                continue
            with self._lock:
                full = len(self._sockets) >= 2 * self.max_connections
            try:
                if full:
                    raise OSError("too many connections")
                server = socket.create_connection(self.target, timeout=5)
            except OSError:  # nothing listens there (the API is down): as it would be
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, server}
            self._spawn(self._pump, client, server)
            self._spawn(self._pump, server, client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while self._open():
                if not select.select([src], [], [], self.POLL)[0]:
                    continue
                data = src.recv(65536)
                if not data or not self._open():
                    break
                dst.sendall(data)
        except (OSError, ValueError):  # closed by the other pump or by stop()
            pass
        self._close(src, dst)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with self._lock:
                self._sockets.discard(sock)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def stop(self) -> None:
        self._stopped.set()
        self._forwarding.set()
        self.listener.close()
        with self._lock:
            socks = list(self._sockets)
        self._close(*socks)
        for thread in self._threads:
            thread.join(2)


def _linger_zero(sock: socket.socket) -> None:
    """Make ``close()`` send a reset rather than a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


# -- a PostgreSQL of the test's own --------------------------------------------------------


def _postgres_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1].parent if found else None


class PostgresInstance:
    """A PostgreSQL server of its own: a cluster in a temporary directory, on a free
    loopback port, trust authentication, fsync off; never the machine's shared one.

    PostgreSQL refuses to run as root: as root it runs as the ``postgres`` OS user
    (``runuser``), which then owns the directory. Stopped and removed by :meth:`destroy`.
    """

    def __init__(self) -> None:
        self.bindir = _postgres_bindir()
        if self.bindir is None:
            raise RuntimeError("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ek-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            entry = pwd.getpwnam("postgres")
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> None:
        cmd = self.as_user + [str(self.bindir / args[0]), *args[1:]]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stdout}{done.stderr}\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def init(self) -> PostgresInstance:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        return self

    def start(self) -> PostgresInstance:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "30", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected, as a service restart does."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def running(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f"CREATE DATABASE {name}"))
        finally:
            engine.dispose()
        return self.url(name)

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop(mode="immediate")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)
