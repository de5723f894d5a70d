"""Tasks for the ``celery -A edge_kombu worker`` tests (loaded with EDGE_KOMBU_INCLUDE)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from edge_kombu.celery import app


@app.task
def hold(marker: str, release: str, limit: float = 120.0) -> str:
    """Write ``marker``, then run until the file ``release`` exists (a controllable task)."""
    Path(marker).write_text(str(os.getpid()))
    deadline = time.monotonic() + limit
    while not Path(release).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release} never appeared")
        time.sleep(0.05)
    return Path(marker).name


@app.task
def touch(marker: str) -> str:
    Path(marker).write_text(str(os.getpid()))
    return Path(marker).name


@app.task(bind=True, ignore_result=True)
def record(self, path: str, n: int, seconds: float = 0.0) -> None:
    """The fault suite's counted task on an edge worker (as ``tests.celery_app.record``)."""
    from tests.faults import record_execution

    record_execution(path, self.request.id, n, self.request.hostname, seconds)


@app.task
def loaded(names: list[str]) -> dict:
    """What the pool process running this task had imported (of ``names``) and frozen."""
    import gc
    import sys

    return {"imported": [name for name in names if name in sys.modules],
            "frozen": gc.get_freeze_count()}
