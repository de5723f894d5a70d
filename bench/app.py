"""The Celery app every broker benchmark runs: a no-op task that notes when it started.

The broker comes from ``BENCH_BROKER_URL``; there is no result backend: the task appends
``<tag> <start time>`` to the file ``BENCH_MARK_FILE`` (one short ``O_APPEND`` write, so
several worker processes can share the file), which is how the harness sees it run.
Worker settings are the same for every broker: ``-P threads -c 8``, acks_late, prefetch 1.
"""

from __future__ import annotations

import os
import time

from celery import Celery

import edge_kombu  # noqa: F401 - registers the edge transport

app = Celery("edge_bench")
app.conf.update(
    broker_url=os.environ.get("BENCH_BROKER_URL"),
    result_backend=None,
    task_ignore_result=True,
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
)

_MARK_FILE = os.environ.get("BENCH_MARK_FILE")


@app.task
def mark(tag: str) -> None:
    """No work: note the wall-clock time the worker started this task."""
    started = time.time()
    fd = os.open(_MARK_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag} {started:.6f}\n".encode())
    finally:
        os.close(fd)
