"""Imports run one way (DESIGN.md §7): the worker side drags in neither the server stack,
Airflow nor the central Airflow code; the central Airflow code loads no worker side."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

WORKER_SIDE = [
    "edge_kombu",
    "edge_kombu.protocol",
    "edge_kombu.errors",
    "edge_kombu.teams",
    "edge_kombu.transport",
    "edge_kombu.transport.settings",
    "edge_kombu.transport.client",
    "edge_kombu.transport.kombu",
    "edge_kombu.transport.backend",
    "edge_kombu.celery",
    "edge_kombu.flower",
    "edge_kombu.worker",
    "edge_kombu.worker.pool",
    "edge_kombu.worker.settings",
    "edge_kombu.worker.sysinfo",
    "edge_kombu.worker.control",
    "edge_kombu.worker.lifecycle",
    "edge_kombu.worker.bootstep",
    "edge_kombu.worker.cli",
    "edge_kombu.worker.logpush",
    "edge_kombu.worker.loop",
    "edge_kombu.airflow",  # the provider package: Airflow only on use
    # Airflow reads the provider's metadata on every host with Airflow, workers too.
    "edge_kombu.airflow.provider",
    "edge_kombu.airflow.worker",  # what runs on an edge host: Airflow only on use
    "edge_kombu.airflow.worker.workload",
    "edge_kombu.airflow.worker.refusal",
    "edge_kombu.airflow.worker.bundles",
]
FORBIDDEN = ["flask", "werkzeug", "sqlalchemy", "alembic", "airflow", "gunicorn", "gevent",
             "edge_kombu.server"]

#: The central Airflow modules that import without Airflow installed; with Airflow, all.
CENTRAL_AIRFLOW = ["edge_kombu.airflow.provider", "edge_kombu.airflow.celery_app",
                   "edge_kombu.airflow.demo", "edge_kombu.airflow.access",
                   "edge_kombu.airflow.logs", "edge_kombu.airflow.bundles"]
CENTRAL_NEEDING_AIRFLOW = ["edge_kombu.airflow.executor", "edge_kombu.airflow.plugin",
                           "edge_kombu.airflow.api", "edge_kombu.airflow.db_manager",
                           "edge_kombu.airflow.logging_config", "edge_kombu.airflow.cli",
                           "edge_kombu.airflow.cli_admin"]
#: What runs only on edge workers (the transport is shared client code: the EdgeExecutor
#: publishes through it).
WORKER_ONLY = ["edge_kombu.worker", "edge_kombu.celery", "edge_kombu.airflow.worker"]


def loaded_after(imports: list[str], then: str = "") -> list[str]:
    """Every module a fresh interpreter holds after importing ``imports``, then running
    ``then``."""
    code = (
        "import sys, json\n"
        + "".join(f"import {name}\n" for name in imports)
        + then + "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def within(modules: list[str], packages: list[str]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)]


def test_worker_side_imports_no_server_stack_nor_central_airflow():
    modules = loaded_after(WORKER_SIDE, "from kombu import Connection\n"
                                        "Connection('edge+http://:t@127.0.0.1:1').transport\n")
    assert within(modules, FORBIDDEN) == [], "worker side imported the server stack or Airflow"
    central = [m for m in modules if m.startswith("edge_kombu.airflow.")
               and not within([m], ["edge_kombu.airflow.worker", "edge_kombu.airflow.provider"])]
    assert central == [], f"worker side imported central Airflow code: {central}"


def test_central_airflow_code_imports_no_worker_side():
    central = CENTRAL_AIRFLOW
    if importlib.util.find_spec("airflow") is not None:
        central = central + CENTRAL_NEEDING_AIRFLOW
    modules = loaded_after(central)
    assert within(modules, WORKER_ONLY) == [], "central Airflow code imported the worker side"
