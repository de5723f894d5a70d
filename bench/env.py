"""What every benchmark shares: the commands it ran, server databases, processes, results.

Processes come from :mod:`tests.helpers` (started and stopped by PID, output in a log
file); scratch databases from :func:`tests.conftest.scratch_database`, so a benchmark on
PostgreSQL never touches another session's tables.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil

from edge_kombu.server.credentials import Credentials
from edge_kombu.server.db import migrate
from edge_kombu.server.sql import SQL, create_db_engine
from tests.helpers import BIN, ROOT, Process, free_port, wait_for

RESULTS = ROOT / "bench" / "results"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
)

#: Every command a benchmark ran, in order: printed as it starts and kept in the results.
COMMANDS: list[str] = []


def record(args: list[str], env: dict | None = None) -> None:
    shown = " ".join(
        f"{k}={'***' if 'TOKEN' in k or 'SECRET' in k else shlex.quote(v)}"
        for k, v in sorted((env or {}).items()) if k.startswith(("BENCH_", "EDGE_", "AIRFLOW__"))
    )
    # Throw-away bench tokens, but secrets stay out of output all the same.
    line = re.sub(r"(://[^:/@]*:)[^@/]+@", r"\1***@", f"{shown} {shlex.join(args)}".strip())
    COMMANDS.append(line)
    print(f"$ {line}", flush=True)


def start(args: list[str], log: Path, env: dict | None = None, cwd: Path | None = None) -> Process:
    record(args, env)
    return Process(args, log, env=env, cwd=cwd).start()


def tmpdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"edge-bench-{prefix}-"))


# -- edge API servers ------------------------------------------------------------------------


@contextlib.contextmanager
def edge_database(kind: str, tmp: Path) -> Iterator[str]:
    """A migrated, empty edge database: ``sqlite`` (a file) or ``postgres`` (scratch DB)."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp / f'edge-{uuid.uuid4().hex[:8]}.db'}"
        _migrate(url)
        yield url
        return
    from tests.conftest import scratch_database

    with scratch_database(POSTGRES_URL) as url:
        _migrate(url)
        yield url


def _migrate(url: str) -> None:
    engine = create_db_engine(url, pool_size=1)
    migrate(engine)
    engine.dispose()


def create_token(db_url: str, name: str = "bench") -> str:
    sql = SQL.from_url(db_url, pool_size=1)
    try:
        # Central: the bench publishes, consumes and inspects with the one token.
        return Credentials(sql).create(name, kind="central")
    finally:
        sql.dispose()


class CountingServer(Process):
    """``python -m bench.server``: the edge API (gunicorn, gevent, ``workers`` processes,
    one by default) that counts requests and bytes per route, read at ``GET /bench/stats``
    (summed over the processes)."""

    def __init__(self, db_url: str, tmp: Path, *, env: dict | None = None,
                 workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        super().__init__([str(BIN / "python"), "-m", "bench.server", "--bind",
                          f"127.0.0.1:{self.port}", "--db", db_url, "--workers", str(workers)],
                         tmp / f"api-{self.port}.log", env=env)

    def start(self) -> CountingServer:
        record(self.args)
        super().start()
        wait_for(self._healthy, timeout=60, message=f"API server on {self.url}")
        return self

    def _healthy(self) -> bool:
        if not self.alive():
            raise AssertionError(f"API server exited:\n{self.log()}")
        # Every process up, not only the first to answer.
        return self.stats() is not None and len(self.processes()) > self.workers

    def stats(self) -> dict | None:
        import requests

        try:
            return requests.get(f"{self.url}/bench/stats", timeout=5).json()
        except requests.RequestException:
            return None

    def broker_url(self, token: str) -> str:
        return self.url.replace("http://", f"edge+http://:{token}@")

    def processes(self) -> list[psutil.Process]:
        """The gunicorn arbiter and its workers."""
        root = psutil.Process(self.pid)
        return [root, *root.children(recursive=True)]


class Usage:
    """CPU seconds and RSS of a group of processes between two samples."""

    def __init__(self, processes: list[psutil.Process]) -> None:
        self.processes = processes
        self.cpu0 = self._cpu()
        self.t0 = time.monotonic()

    def _cpu(self) -> float:
        total = 0.0
        for proc in self.processes:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss_mb(self) -> float:
        total = 0
        for proc in self.processes:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return round(total / 2**20, 1)

    def cpu_percent(self) -> float:
        """Average CPU (100 = one core) since this object was made."""
        elapsed = time.monotonic() - self.t0
        return round(100 * (self._cpu() - self.cpu0) / elapsed, 1) if elapsed > 0 else 0.0


# -- statistics and results ----------------------------------------------------------------


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


def summary_ms(seconds: list[float]) -> dict:
    return {
        "n": len(seconds),
        "p50_ms": round(statistics.median(seconds) * 1000, 2),
        "p99_ms": round(percentile(seconds, 99) * 1000, 2),
    }


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def save(name: str, data: dict, *, quick: bool, out: Path | None = None) -> Path:
    """Write ``bench/results/<name>[-quick].json`` with the commands run and the machine."""
    out = out or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}{'-quick' if quick else ''}.json"
    data = {"benchmark": name, "quick": quick, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ",
            time.gmtime()), "machine": machine(), **data, "commands": list(COMMANDS)}
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {path}", flush=True)
    return path


def python() -> str:
    return sys.executable
