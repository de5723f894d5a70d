"""The worker side must not drag in the server stack or Airflow (DESIGN.md §7)."""

from __future__ import annotations

import subprocess
import sys

WORKER_SIDE = [
    "edge_kombu",
    "edge_kombu.protocol",
    "edge_kombu.errors",
    "edge_kombu.transport",
    "edge_kombu.transport.client",
    "edge_kombu.transport.kombu",
    "edge_kombu.transport.backend",
    "edge_kombu.celery",
    "edge_kombu.worker",
    "edge_kombu.worker.pool",
    "edge_kombu.worker.settings",
    "edge_kombu.worker.sysinfo",
    "edge_kombu.worker.control",
    "edge_kombu.worker.lifecycle",
    "edge_kombu.worker.bootstep",
    "edge_kombu.worker.cli",
    "edge_kombu.worker.logpush",
    "edge_kombu.airflow",  # the provider package: Airflow only on use
    "edge_kombu.airflow.provider",
    "edge_kombu.airflow.worker",
    "edge_kombu.airflow.worker.workload",
    "edge_kombu.airflow.worker.refusal",
]
FORBIDDEN = ["flask", "werkzeug", "sqlalchemy", "alembic", "airflow", "gunicorn", "gevent",
             "edge_kombu.server"]


def test_worker_side_imports_no_server_stack():
    code = (
        "import sys, json\n"
        + "".join(f"import {name}\n" for name in WORKER_SIDE)
        + "from kombu import Connection\n"
        + "Connection('edge+http://:t@127.0.0.1:1').transport\n"
        + f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} "
        + f"or any(m.startswith(p + '.') or m == p for p in {FORBIDDEN!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"worker side imported: {out.stdout}"
