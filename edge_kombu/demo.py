"""``edge-kombu demo``: the API on the embedded SQLite default, one worker, a few tasks.

Everything it starts runs as a child process and is stopped by PID when the demo
ends or is interrupted.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import click
from celery import Celery, chord, group

import edge_kombu  # noqa: F401 - registers the edge transport
from edge_kombu.children import free_port, start_child, wait_until

app = Celery("edge_kombu_demo")
app.conf.update(
    broker_url=os.environ.get("EDGE_KOMBU_DEMO_URL"),
    result_backend=os.environ.get("EDGE_KOMBU_DEMO_URL"),
    task_acks_late=True,
    worker_prefetch_multiplier=1,
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def total(numbers: list[int]) -> int:
    return sum(numbers)


@app.task(bind=True)
def where(self) -> str:
    return f"{self.request.hostname} (pid {os.getpid()})"


def _healthy(port: int) -> bool:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).ok
    except requests.RequestException:
        return False


def run_demo(db_url: str | None) -> None:
    from edge_kombu.server.db import describe, migrate, resolve_db_url
    from edge_kombu.server.sql import create_db_engine

    url = resolve_db_url(db_url)
    click.echo(f"database: {describe(url)}")
    migrate(create_db_engine(url, pool_size=1))
    port = free_port()
    secret = secrets.token_urlsafe(32)
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, AIRFLOW__CORE__INTERNAL_API_SECRET_KEY=secret,
               EDGE_KOMBU_DEMO_URL=f"edge+http://127.0.0.1:{port}")
    logs = Path(tempfile.mkdtemp(prefix="edge-kombu-demo-"))
    with ExitStack() as stack:
        api = start_child(stack, [str(bin_dir / "edge-kombu"), "api", "--db", url,
                                  "--bind", f"127.0.0.1:{port}"], env, logs / "api.log")
        wait_until(lambda: _healthy(port), 30, "the edge API", api, logs / "api.log")
        click.echo(f"edge API:  http://127.0.0.1:{port}/api/v1/health (log {logs / 'api.log'})")
        worker_log = logs / "worker.log"
        worker = start_child(stack, [str(bin_dir / "celery"), "-A", "edge_kombu.demo", "worker",
                                     "-n", "demo@%h", "-c", "2", "-P", "threads", "-l", "info"],
                             env, worker_log)
        wait_until(lambda: " ready." in worker_log.read_text(), 60, "the worker", worker,
                   worker_log)
        click.echo(f"worker:    demo@{socket.gethostname()} (log {worker_log})")
        app.conf.update(
            broker_url=env["EDGE_KOMBU_DEMO_URL"],
            result_backend=env["EDGE_KOMBU_DEMO_URL"],
            broker_transport_options={"secret": secret},
            result_backend_transport_options={"secret": secret},
        )
        started = time.perf_counter()
        ran_on = where.delay().get(timeout=30)
        click.echo(f"where() ran on {ran_on}")
        click.echo(f"add(2, 3) = {add.delay(2, 3).get(timeout=30)}")
        click.echo(f"group of 5 adds = {group(add.s(i, i) for i in range(5))().get(timeout=30)}")
        result = chord((add.s(i, 1) for i in range(5)), total.s())().get(timeout=30)
        click.echo(f"chord total = {result}")
        click.echo(f"all demo tasks done in {time.perf_counter() - started:.2f}s; stopping")
