"""Publish→task-start latency of a no-op task, edge transport vs Redis, same worker settings.

    python -m bench.latency [--tasks 200]

Worker: ``-P threads -c 8``, acks_late, prefetch multiplier 1. Tasks are sent one at a
time (low load): each is published, then awaited, then the next one is sent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from celery import Celery

from edge_kombu.server.db import create_db_engine, migrate
from edge_kombu.server.store import Store
from tests.helpers import BIN, APIServer, Process, wait_for

REDIS_URL = "redis://127.0.0.1:6379/15"


def measure(broker_url: str, result_url: str, tmp: Path, tasks: int, name: str) -> dict:
    worker = Process(
        [str(BIN / "celery"), "-A", "bench.app", "worker", "-P", "threads", "-c", "8",
         "-l", "warning", "-n", f"{name}@bench", "--without-gossip", "--without-mingle"],
        tmp / f"worker-{name}.log",
        env={"BENCH_BROKER_URL": broker_url, "BENCH_RESULT_URL": result_url},
    ).start()
    client = Celery("bench_client", broker=broker_url, backend=result_url, set_as_current=False)
    try:
        wait_for(lambda: client.control.ping(timeout=0.5), timeout=60, message=f"{name} worker")
        latencies = []
        for i in range(tasks + 5):
            sent = time.time()
            started = client.send_task("bench.app.started_at").get(timeout=30, interval=0.005)
            if i >= 5:  # warm-up
                latencies.append(started - sent)
    finally:
        client.close()
        worker.stop()
    latencies.sort()
    return {
        "broker": name,
        "tasks": tasks,
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p90_ms": round(latencies[int(0.9 * len(latencies))] * 1000, 2),
        "p99_ms": round(latencies[int(0.99 * len(latencies)) - 1] * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    db_url = f"sqlite:///{tmp / 'edge.db'}"
    engine = create_db_engine(db_url, pool_size=1)
    migrate(engine)
    token = Store(engine).create_token("bench")
    api = APIServer(db_url, tmp).start()
    try:
        edge = api.url.replace("http://", f"edge+http://:{token}@")
        rows = [measure(edge, edge, tmp, args.tasks, "edge-sqlite")]
    finally:
        api.stop()
    rows.append(measure(REDIS_URL, REDIS_URL, tmp, args.tasks, "redis"))
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
