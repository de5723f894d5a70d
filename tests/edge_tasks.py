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
