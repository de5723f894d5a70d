"""Broker micro-benchmarks: one no-op Celery task (:mod:`bench.app`), the same worker
settings for every broker (``-P threads -c 8``, acks_late, prefetch 1, no gossip/mingle).

latency
    One worker; tasks sent one at a time (low load): publish→start of each.
throughput
    1 and 4 workers consume an idle queue while N tasks are published to another; then
    one broadcast ``add_consumer`` makes them all start on it at once. Tasks/s over the
    middle 90 % of the task start times.
publishing
    One producer sends N tasks back to back, one ``send_task`` each, while one worker
    consumes them: the producer's publishes/s, and the end-to-end tasks/s (first publish
    to last task start).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from celery import Celery

from bench import env
from tests.helpers import BIN, APIServer, wait_for

BROKERS = ("edge-sqlite", "edge-postgres", "redis", "rabbitmq")
WORKER_SETTINGS = ["-P", "threads", "-c", "8", "--without-gossip", "--without-mingle"]


@contextlib.contextmanager
def broker(name: str, tmp: Path) -> Iterator[str]:
    """The broker URL of ``name``, with an edge API server for the edge brokers."""
    if name == "redis":
        yield env.REDIS_URL
        return
    if name == "rabbitmq":
        yield env.RABBITMQ_URL
        return
    with env.edge_database(name.split("-", 1)[1], tmp) as db_url:
        token = env.create_token(db_url)
        server = APIServer(db_url, tmp)
        env.record(server.args)
        server.start()
        try:
            yield server.url.replace("http://", f"edge+http://:{token}@")
        finally:
            server.stop()


class Marks:
    """The task start times the workers append to one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()
        self._offset = 0
        self.seen: dict[str, float] = {}

    def read(self) -> dict[str, float]:
        with open(self.path, "rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].decode().splitlines():
            tag, started = line.split()
            self.seen[tag] = float(started)
        return self.seen

    def wait(self, tag: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while tag not in self.read():
            if time.monotonic() > deadline:
                raise AssertionError(f"task {tag} did not start within {timeout}s")
            time.sleep(0.0005)
        return self.seen[tag]


def _workers(url: str, queue: str, count: int, marks: Path, tmp: Path, label: str) -> list:
    return [
        env.start(
            [str(BIN / "celery"), "-A", "bench.app", "worker", *WORKER_SETTINGS, "-Q", queue,
             "-n", f"{label}{i}@bench", "-l", "warning"],
            tmp / f"worker-{label}{i}.log",
            env={"BENCH_BROKER_URL": url, "BENCH_MARK_FILE": str(marks)},
        )
        for i in range(count)
    ]


def _stop(workers: list) -> None:
    for worker in workers:
        worker.stop()


@contextlib.contextmanager
def _one_worker(url: str, tmp: Path, label: str) -> Iterator[tuple[Celery, str, Marks]]:
    """One worker on a fresh queue that has run a warm-up task: (client, queue, marks)."""
    queue = f"bench-{label}-{uuid.uuid4().hex[:8]}"
    marks = Marks(tmp / f"marks-{queue}")
    workers = _workers(url, queue, 1, marks.path, tmp, label)
    client = Celery("bench_client", broker=url, set_as_current=False)
    client.conf.task_ignore_result = True
    try:
        client.send_task("bench.app.mark", args=["warm-up"], queue=queue)
        marks.wait("warm-up", timeout=90)
        yield client, queue, marks
    finally:
        _cleanup(client, [queue])
        _stop(workers)


def latency(url: str, tmp: Path, tasks: int, label: str) -> dict:
    seconds = []
    with _one_worker(url, tmp, f"{label}-lat") as (client, queue, marks):
        for i in range(tasks + 5):
            sent = time.time()
            client.send_task("bench.app.mark", args=[str(i)], queue=queue)
            started = marks.wait(str(i), timeout=30)
            if i >= 5:  # the first few warm connections and caches up
                seconds.append(started - sent)
    return env.summary_ms(seconds)


def throughput(url: str, tmp: Path, tasks: int, workers_n: int, label: str) -> dict:
    idle = f"bench-idle-{uuid.uuid4().hex[:8]}"
    queue = f"bench-tp-{uuid.uuid4().hex[:8]}"
    marks = Marks(tmp / f"marks-{queue}")
    workers = _workers(url, idle, workers_n, marks.path, tmp, f"{label}-tp{workers_n}-")
    client = Celery("bench_client", broker=url, set_as_current=False)
    client.conf.task_ignore_result = True
    try:
        wait_for(lambda: len(client.control.ping(timeout=1.0)) >= workers_n, timeout=120,
                 interval=0.5, message=f"{workers_n} worker(s) answer ping")
        with client.producer_or_acquire() as producer:
            for i in range(tasks):
                client.send_task("bench.app.mark", args=[str(i)], queue=queue,
                                 producer=producer)
        replies = client.control.add_consumer(queue, reply=True, timeout=5.0)
        if len(replies) < workers_n:
            raise AssertionError(f"only {len(replies)} of {workers_n} workers took {queue}")
        deadline = time.monotonic() + max(60.0, tasks / 20)
        while len(marks.read()) < tasks:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(marks.seen)} of {tasks} tasks ran in time")
            time.sleep(0.05)
    finally:
        _cleanup(client, [queue, idle])
        _stop(workers)
    starts = sorted(marks.seen.values())
    lo, hi = int(0.05 * tasks), int(0.95 * tasks) - 1
    return {"n": tasks, "workers": workers_n,
            "tasks_per_s": round((hi - lo) / (starts[hi] - starts[lo]), 1)}


def publishing(url: str, tmp: Path, tasks: int, label: str) -> dict:
    with _one_worker(url, tmp, f"{label}-pub") as (client, queue, marks):
        first = time.time()
        for i in range(tasks):
            client.send_task("bench.app.mark", args=[str(i)], queue=queue)
        published = time.time()
        deadline = time.monotonic() + max(60.0, tasks / 10)
        while len(marks.read()) < tasks + 1:  # and the warm-up
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(marks.seen) - 1} of {tasks} tasks ran in time")
            time.sleep(0.05)
        last = max(marks.seen.values())
    return {"n": tasks, "publishes_per_s": round(tasks / (published - first), 1),
            "end_to_end_tasks_per_s": round(tasks / (last - first), 1)}


def _cleanup(client: Celery, queues: list[str]) -> None:
    with contextlib.suppress(Exception), client.connection_for_write() as conn:
        for queue in queues:
            with contextlib.suppress(Exception):
                conn.default_channel.queue_delete(queue)
    client.close()


def run(*, quick: bool, brokers: tuple[str, ...] = BROKERS) -> dict:
    tasks_lat, tasks_tp, tasks_pub = (20, 40, 40) if quick else (300, 3000, 1500)
    results = {}
    tmp = env.tmpdir("brokers")
    for name in brokers:
        with broker(name, tmp) as url:
            row = {"latency": latency(url, tmp, tasks_lat, name)}
            for n in (1, 4):
                row[f"throughput_{n}"] = throughput(url, tmp, tasks_tp, n, name)
            row["publishing"] = publishing(url, tmp, tasks_pub, name)
        results[name] = row
        print(name, row, flush=True)
    if "redis" in results:
        redis = results["redis"]
        for row in results.values():
            row["vs_redis"] = {
                "p50": round(row["latency"]["p50_ms"] / redis["latency"]["p50_ms"], 2),
                "p99": round(row["latency"]["p99_ms"] / redis["latency"]["p99_ms"], 2),
                **{f"throughput_{n}": round(row[f"throughput_{n}"]["tasks_per_s"]
                                            / redis[f"throughput_{n}"]["tasks_per_s"], 2)
                   for n in (1, 4)},
                **{key: round(row["publishing"][key] / redis["publishing"][key], 2)
                   for key in ("publishes_per_s", "end_to_end_tasks_per_s")},
            }
    return {"settings": {"worker": WORKER_SETTINGS, "acks_late": True, "prefetch_multiplier": 1,
                         "latency_tasks": tasks_lat, "throughput_tasks": tasks_tp,
                         "publishing_tasks": tasks_pub},
            "brokers": results}
