"""edge_demo: tasks on an edge worker, one of two slots, a mapped task, a summary at the centre.

Edge workers export ``EDGE_KOMBU_WORKER`` (their Celery node name) to the tasks they run,
so each task can tell where it ran.
"""

from __future__ import annotations

import os
import socket

import pendulum
from airflow.sdk import dag, task


def _where() -> str:
    worker = os.environ.get("EDGE_KOMBU_WORKER")
    place = f"edge worker {worker}" if worker else f"central site ({socket.gethostname()})"
    return f"{place}, pid {os.getpid()}"


@dag(schedule=None, start_date=pendulum.datetime(2026, 1, 1), catchup=False,
     tags=["edge-kombu", "example"])
def edge_demo():
    @task
    def hello() -> str:
        print("hello from", _where())
        return _where()

    @task(pool_slots=2)
    def two_slots() -> str:
        return _where()

    @task
    def square(x: int) -> str:
        return f"{x}² = {x * x} on {_where()}"

    @task(executor="LocalExecutor")
    def summary(first: str, big: str, squares) -> str:
        for line in (first, big, *squares):
            print(line)
        return _where()

    summary(hello(), two_slots(), square.expand(x=[1, 2, 3]))


edge_demo()
