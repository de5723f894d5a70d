"""The Celery app every broker benchmark runs: a no-op task that reports when it started."""

from __future__ import annotations

import os
import time

from celery import Celery

import edge_kombu  # noqa: F401 - registers the edge transport

app = Celery("edge_bench")
app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL"),
    result_backend=os.environ.get("BENCH_RESULT_URL") or None,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=False,
    broker_connection_retry_on_startup=True,
)


@app.task
def started_at() -> float:
    """No work: returns the wall-clock time the worker started it."""
    return time.time()
