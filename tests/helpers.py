"""Helpers for tests: a clock moved by hand, and real processes (the API server, Celery
workers) started and stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: Debian's browser, handed to Playwright by the page tests (no browser download).
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class FakeClock:
    """A clock the test moves by hand (give it to :class:`~edge_kombu.server.sql.SQL`)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05,
             message: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except AssertionError:
            raise  # the predicate knows it can never come true (e.g. the process died)
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last error
            last_exc = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}; last: {last_exc!r}")


def drain_until(conn, done: Callable[[], object], timeout: float = 10.0) -> None:
    """Drain a kombu connection until ``done()`` holds, one ``drain_events`` after another
    as Celery does (a call may return early, when nudged); fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "expected messages did not arrive"
        try:
            conn.drain_events(timeout=1)
        except TimeoutError:
            pass


def messages_left(sql, *where) -> int:
    """Messages stored on the server (waiting or leased; or those matching ``where``, e.g.
    ``models.message.c.redelivered.is_(True)``), read from its database."""
    from sqlalchemy import func, select

    from edge_kombu.server import models

    with sql.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(models.message).where(*where)).scalar_one()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Process:
    """A child process with its output in a log file; stopped by PID."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None,
                 cwd: Path | None = None) -> None:
        self.args = args
        self.log_path = log_path
        self.env = dict(os.environ, **(env or {}))
        self.env.setdefault("PYTHONPATH", str(ROOT))
        self.cwd = cwd or ROOT
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        if getattr(self, "_log", None) is not None:
            self._log.close()  # started again after a kill
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process group (the process and any children it forked)."""
        if self.alive():
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


class APIServer(Process):
    """``edge-kombu api`` on a free loopback port."""

    def __init__(self, db_url: str, tmp: Path, *, env: dict | None = None, port: int | None = None,
                 extra: list[str] | None = None, name: str = "api") -> None:
        self.port = port or free_port()
        self.tls = "--certfile" in (extra or [])
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        self.db_url = db_url
        args = [str(BIN / "edge-kombu"), "api", "--bind", f"127.0.0.1:{self.port}", "--db", db_url]
        super().__init__(args + (extra or []), tmp / f"{name}-{self.port}.log", env=env)

    def start(self) -> APIServer:
        super().start()
        wait_for(self.healthy, timeout=30, message=f"API server on {self.url}")
        return self

    def healthy(self) -> bool:
        if not self.alive():
            raise AssertionError(f"API server exited:\n{self.log()}")
        if self.tls:  # the handshake may need a client certificate: a listening port will do
            with socket.socket() as sock:
                return sock.connect_ex(("127.0.0.1", self.port)) == 0
        try:
            return requests.get(f"{self.url}/api/v1/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def restart(self) -> None:
        self.stop()
        self.start()


class CeleryWorker(Process):
    """``celery -A tests.celery_app worker`` against an API server."""

    def __init__(self, broker_url: str, tmp: Path, *, name: str, queues: str = "celery",
                 concurrency: int = 2, pool: str = "threads", events: bool = False,
                 env: dict | None = None, app: str = "tests.celery_app") -> None:
        self.name = name
        self.hostname = f"{name}@localhost"
        args = [str(BIN / "celery"), "-A", app, "worker", "-n", self.hostname, "-Q", queues,
                "-c", str(concurrency), "-P", pool,
                "-l", os.environ.get("EDGE_TEST_WORKER_LOGLEVEL", "info")]
        if events:
            args.append("-E")
        env = dict(env or {}, EDGE_TEST_BROKER_URL=broker_url, EDGE_TEST_RESULT_URL=broker_url)
        if ":" in pool:  # a pool class path: Celery's CLI takes it as -P custom
            env["CELERY_CUSTOM_WORKER_POOL"] = pool
            args[args.index(pool)] = "custom"
        super().__init__(args, tmp / f"worker-{name}.log", env=env)

    def start(self, wait_ready: bool = True) -> CeleryWorker:
        super().start()
        if wait_ready:
            wait_for(self.ready, timeout=60, message=f"worker {self.name} ready")
        return self

    def ready(self) -> bool:
        if not self.alive():
            raise AssertionError(f"worker {self.name} exited:\n{self.log()}")
        return " ready." in self.log()

    def stop(self, timeout: float = 15.0) -> None:
        # SIGTERM to the main process first: signalling the whole group also kills the
        # prefork pool's processes, and one holding the pool's queue lock makes Celery hang
        # at exit until it is killed.
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        super().stop(5.0)
