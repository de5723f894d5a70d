"""Database work per task: what the edge API asks of its database for each Celery task.

One counting API server (:mod:`bench.server`, which also counts SQL statements, commits and
pool checkouts through SQLAlchemy's engine events) and one no-op Celery worker of
:mod:`bench.brokers` (``-P threads -c 8``, acks_late, prefetch 1), per database:

idle
    The worker connected and idle: statements and commits per second (its long-polls and
    heartbeats plus the server's own housekeeping).
sequential
    N tasks sent one at a time, each waited for (low load): per task.
batch
    M tasks published at once while the worker consumes: per task, and tasks/s from the
    first publish to the last start.

Per-task figures include the idle work over the window (reported separately), the
publishing client's requests, and the worker's own traffic (heartbeats, events); they are
the database load one task brings to a running installation. Also the server's CPU per
task and the RSS of the API server and of the worker (all its processes).
"""

from __future__ import annotations

import time
import uuid

import psutil
import requests
from celery import Celery

from bench import brokers, env

FIELDS = ("statements", "statements_SELECT", "statements_INSERT", "statements_UPDATE",
          "statements_DELETE", "commits", "rollbacks", "checkouts")


class Window:
    """Database, request and CPU counts of the API server between start and stop."""

    def __init__(self, server: env.CountingServer) -> None:
        self.server = server
        self.sql0 = self._sql()
        self.req0 = self._requests()
        self.usage = env.Usage(server.processes())
        self.cpu0 = self.usage.cpu0
        self.t0 = time.monotonic()

    def _sql(self) -> dict:
        return requests.get(f"{self.server.url}/bench/sql", timeout=5).json()

    def _requests(self) -> int:
        return sum(c["requests"] for c in self.server.stats().values())

    def settle(self, tasks: int, timeout: float = 30.0) -> None:
        """Wait until ``tasks`` messages were deleted since the start: a task's ack (its
        DELETE) comes after the task started, from the worker's ack thread."""
        deadline = time.monotonic() + timeout
        while (self._sql().get("statements_DELETE", 0)
               - self.sql0.get("statements_DELETE", 0)) < tasks:
            if time.monotonic() > deadline:
                raise AssertionError(f"the acks of {tasks} tasks did not arrive in time")
            time.sleep(0.05)

    def per(self, units: float) -> dict:
        elapsed = time.monotonic() - self.t0
        sql = self._sql()
        out = {k: round((sql.get(k, 0) - self.sql0.get(k, 0)) / units, 2) for k in FIELDS}
        out["requests"] = round((self._requests() - self.req0) / units, 2)
        out["server_cpu_ms"] = round((self.usage._cpu() - self.cpu0) * 1000 / units, 2)
        out["seconds"] = round(elapsed, 2)
        return out


def _rss_mb(process) -> float:
    root = psutil.Process(process.pid)
    return round(sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
                 / 2**20, 1)


def one(db: str, *, idle_s: float, sequential: int, batch: int) -> dict:
    tmp = env.tmpdir(f"dbload-{db}")
    out: dict = {"db": db}
    with env.edge_database(db, tmp) as db_url:
        server = env.CountingServer(db_url, tmp).start()
        url = server.broker_url(env.create_token(db_url))
        queue = f"bench-db-{uuid.uuid4().hex[:8]}"
        marks = brokers.Marks(tmp / f"marks-{queue}")
        workers = brokers._workers(url, queue, 1, marks.path, tmp, f"{db}-db")
        client = Celery("bench_client", broker=url, set_as_current=False)
        client.conf.task_ignore_result = True
        try:
            client.send_task("bench.app.mark", args=["warm-up"], queue=queue)
            marks.wait("warm-up", timeout=90)
            time.sleep(2.0)  # start-up traffic (declarations, first heartbeats) is not idle
            window = Window(server)
            time.sleep(idle_s)
            out["idle_per_s"] = window.per(idle_s)
            window = Window(server)
            for i in range(sequential):
                client.send_task("bench.app.mark", args=[f"s{i}"], queue=queue)
                marks.wait(f"s{i}", timeout=30)
            window.settle(sequential)
            out["sequential_per_task"] = window.per(sequential)
            window = Window(server)
            started = time.time()
            with client.producer_or_acquire() as producer:
                for i in range(batch):
                    client.send_task("bench.app.mark", args=[f"b{i}"], queue=queue,
                                     producer=producer)
            deadline = time.monotonic() + max(60.0, batch / 10)
            while sum(1 for tag in marks.read() if tag.startswith("b")) < batch:
                if time.monotonic() > deadline:
                    raise AssertionError(f"batch of {batch} did not run in time")
                time.sleep(0.05)
            last = max(v for k, v in marks.seen.items() if k.startswith("b"))
            window.settle(batch)
            out["batch_per_task"] = window.per(batch)
            out["batch_per_task"]["tasks_per_s"] = round(batch / (last - started), 1)
            out["rss_mb"] = {"api_server": _rss_mb(server), "worker": _rss_mb(workers[0])}
        finally:
            brokers._cleanup(client, [queue])
            brokers._stop(workers)
            server.stop()
    print(db, out, flush=True)
    return out


def run(*, quick: bool, dbs: tuple[str, ...] = ("sqlite", "postgres")) -> dict:
    idle_s, sequential, batch = (5.0, 10, 40) if quick else (20.0, 100, 500)
    return {"settings": {"worker": brokers.WORKER_SETTINGS, "idle_seconds": idle_s,
                         "sequential_tasks": sequential, "batch_tasks": batch},
            "databases": {db: one(db, idle_s=idle_s, sequential=sequential, batch=batch)
                          for db in dbs}}
