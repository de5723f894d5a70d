"""The Celery app the integration tests run in real ``celery worker`` processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from celery import Celery

import edge_kombu  # noqa: F401 - registers the edge transport

app = Celery("edge_tests")
app.conf.update(
    broker_url=os.environ.get("EDGE_TEST_BROKER_URL"),
    result_backend=os.environ.get("EDGE_TEST_RESULT_URL"),
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_track_started=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)

if os.environ.get("EDGE_TEST_USE_SSL"):
    ca, cert, key = os.environ["EDGE_TEST_USE_SSL"].split("|")
    app.conf.broker_use_ssl = {"ca_certs": ca, "certfile": cert, "keyfile": key}


@app.task
def add(x, y):
    return x + y


@app.task
def tsum(numbers):
    return sum(numbers)


@app.task
def noop():
    return None


@app.task
def stamp(path: str, label: str) -> str:
    """Append ``label`` to a file: lets tests count executions across workers."""
    with open(path, "a") as fh:
        fh.write(f"{label} {os.getpid()}\n")
    return label


@app.task(rate_limit="2/m")
def rate_limited_stamp(path: str, label: str) -> str:
    """``stamp`` at most twice a minute: the worker holds the rest back in its bucket."""
    return stamp(path, label)


@app.task
def sleep_then_stamp(path: str, label: str, seconds: float) -> str:
    """Mark the start, sleep, then append ``label``: a long-running acks_late task."""
    Path(f"{path}.started").write_text(str(os.getpid()))
    time.sleep(seconds)
    return stamp(path, label)


@app.task(bind=True, max_retries=3, default_retry_delay=0.2)
def flaky(self, path: str, failures: int):
    """Fail ``failures`` times (counted in a file), then succeed with the attempt number."""
    attempt = len(Path(path).read_text().splitlines()) if Path(path).exists() else 0
    with open(path, "a") as fh:
        fh.write("try\n")
    if attempt < failures:
        raise self.retry(exc=RuntimeError(f"attempt {attempt} fails"))
    return attempt


@app.task
def started_at() -> float:
    return time.time()


@app.task(bind=True)
def weighted(self, path: str, label: str, seconds: float) -> str:
    """Record start and end (with the task's slots) as JSON lines, for overlap checks."""
    import json

    slots = (self.request.get("pool_slots") if hasattr(self.request, "get") else None) or 1
    start = time.time()
    time.sleep(seconds)
    with open(path, "a") as fh:
        fh.write(json.dumps({"label": label, "slots": slots, "start": start, "end": time.time()})
                 + "\n")
    return label


@app.task
def crash() -> None:
    """Kill the process running the task, as a segfault would."""
    os._exit(13)


@app.task(bind=True, max_retries=3)
def record_run(self, path: str, retries_wanted: int = 0) -> int:
    """Append this execution's task id and retry count to a file (executions per task id);
    call ``retry()`` until it ran ``retries_wanted`` retries."""
    with open(path, "a") as fh:
        fh.write(f"{self.request.id} {self.request.retries}\n")
    if self.request.retries < retries_wanted:
        raise self.retry(countdown=0)
    return self.request.retries


@app.task(bind=True, ignore_result=True)
def record(self, path: str, n: int, seconds: float = 0.0) -> None:
    """The fault suite's counted task: one start and one end line per execution in ``path``
    (see tests/faults.py), ``seconds`` of work between them."""
    from tests.faults import record_execution

    record_execution(path, self.request.id, n, self.request.hostname, seconds)
