"""deploy/systemd/edge-kombu-worker@.service's commands, run as systemd would run them
(its Environment= defaults, an environment file, %i and %H, ${VAR} expanded), without
systemd: ExecStart starts a worker that takes a task, and ExecStop, run while the task
runs, drains it (the task finishes, is acknowledged) and returns once the worker exited
with code 0, well within TimeoutStopSec."""

from __future__ import annotations

import os
import socket
import subprocess
import time

from tests.helpers import ROOT, Process, wait_for
from tests.systemd_units import INSTALLED, UNITS, directives, expand, unit_environment
from tests.worker.conftest import HEARTBEAT_INTERVAL, last_json, queue_depth

UNIT = UNITS / "edge-kombu-worker@.service"


def test_exec_start_runs_a_worker_and_exec_stop_drains_it(api, token, send, broker, tmp_path):
    instance = "unit-test"
    env = unit_environment(UNIT, instance, {
        "AIRFLOW__EDGE__API_URL": api.url, "EDGE_KOMBU_TOKEN": token,
        "EDGE_KOMBU_QUEUES": "remote", "EDGE_KOMBU_CONCURRENCY": "2",
        "EDGE_KOMBU_INCLUDE": "tests.edge_tasks",
        "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
    }, tmp_path, {"AIRFLOW_HOME": "state", "HOME": "state", "EDGE_KOMBU_RUN_DIR": "run"})
    unit = directives(UNIT)
    start = expand(unit["ExecStart"][0], instance, env)
    stop = expand(unit["ExecStop"][0], instance, env)
    worker = Process(start, tmp_path / "unit-worker.log")
    # Only the unit's environment counts: none of this process's edge or Airflow settings.
    worker.env = {**{k: v for k, v in os.environ.items()
                     if not k.startswith(("AIRFLOW__", "EDGE_KOMBU_"))},
                  **env, "PYTHONPATH": str(ROOT)}
    worker.start()
    try:
        def state() -> str | None:
            assert worker.alive(), worker.log()[-3000:]
            status = subprocess.run(
                expand(f"{INSTALLED}celery -A edge_kombu edge status -n %i", instance, env),
                env=worker.env, cwd=ROOT, capture_output=True, text=True, timeout=30)
            return last_json(status.stdout)["state"] if status.returncode == 0 else None

        wait_for(lambda: state() == "idle", timeout=60, message="the unit's worker idle")
        assert f"{instance}@{socket.gethostname()}" in worker.log()

        started, release = tmp_path / "started", tmp_path / "release"
        result = send("hold", str(started), str(release))
        wait_for(started.exists, timeout=30, message="the task running on the unit's worker")

        stopping = time.monotonic()
        drain = subprocess.Popen(stop, env=worker.env, cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_for(lambda: state() == "terminating", timeout=30, message="the worker draining")
        assert drain.poll() is None and worker.alive(), "ExecStop returned before the drain"
        release.touch()
        out, err = drain.communicate(timeout=60)
        took = time.monotonic() - stopping
        assert drain.returncode == 0, err
        assert worker.proc.wait(30) == 0, worker.log()[-3000:]
    finally:
        worker.stop()
    assert result.get(timeout=30) == "started"
    assert queue_depth(broker, "remote") == {"ready": 0, "leased": 0}
    timeout = float(unit["TimeoutStopSec"][0])
    print(f"ExecStop returned {took:.1f} s after it started, the held task released on the "
          f"way (TimeoutStopSec {timeout:g})")
    assert took < timeout
