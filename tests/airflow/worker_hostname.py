"""``[core] hostname_callable`` of test edge workers: they all run on this machine, so each
reports the name in ``EDGE_TEST_WORKER`` and Airflow records it as the task's hostname."""

from __future__ import annotations

import os


def worker_name() -> str:
    return os.environ["EDGE_TEST_WORKER"]
