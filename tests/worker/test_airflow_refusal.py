"""An edge worker without Airflow fails an Airflow workload at once, saying what to install:
in its own log, in the result the EdgeExecutor reads, and in the task's log on the server.
(With Airflow installed, the version checks are tested in tests/airflow/test_refusal.py.)"""

from __future__ import annotations

import importlib.util
import json
import uuid

import pytest

from edge_kombu.airflow.worker.refusal import check_versions
from edge_kombu.server.logs import TaskInstanceTry, TaskLogs
from tests.helpers import wait_for

TI = {"id": str(uuid.uuid4()), "dag_id": "remote_dag", "task_id": "extract",
      "run_id": "manual__1", "try_number": 1, "map_index": -1, "pool_slots": 1,
      "queue": "remote", "priority_weight": 1}
WORKLOAD = {"type": "ExecuteTask", "token": "not-a-real-token", "ti": TI,
            "dag_rel_path": "remote_dag.py", "bundle_info": {"name": "dags-folder"},
            "log_path": "dag_id=remote_dag/run_id=manual__1/task_id=extract/attempt=1.log"}


def test_version_rules():
    assert check_versions("3.3.2", "3.3.2") == (None, None)
    assert check_versions(None, "3.3.2") == (None, None)  # not sent by the EdgeExecutor
    error, warning = check_versions("3.3.2", "2.10.5")
    assert warning is None and "runs Airflow 2.10.5, the central site Airflow 3.3.2" in error
    assert "install apache-airflow==3.3.2" in error
    error, warning = check_versions("3.3.2", "3.2.0")
    assert error is None and "the task runs" in warning
    error, _ = check_versions("3.3.2", None)
    assert "apache-airflow is not installed" in error and "apache-airflow==3.3.2" in error


@pytest.mark.skipif(importlib.util.find_spec("airflow") is not None,
                    reason="this worker has Airflow; see tests/airflow/test_refusal.py")
def test_worker_without_airflow_fails_the_workload_and_says_why(
        edge_workers, env_for, api, celery_client, sql, tmp_path):
    env = env_for(api, AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(tmp_path / "logs"))
    worker = edge_workers("no-airflow", env=env)

    result = celery_client.send_task("execute_workload", args=(json.dumps(WORKLOAD),),
                                     queue="remote", headers={"airflow_version": "3.3.2"})
    result.get(timeout=30, propagate=False)
    assert result.state == "FAILURE"
    message = str(result.result)
    assert "apache-airflow is not installed" in message, message
    assert "install apache-airflow==3.3.2" in message, message
    assert "apache-airflow is not installed" in worker.log()

    # The task's log on the server (what Airflow's UI shows) says the same.
    ti = TaskInstanceTry(dag_id="remote_dag", task_id="extract", run_id="manual__1",
                         map_index=-1, try_number=1)
    stored = wait_for(lambda: TaskLogs(sql).read(ti).data, message="pushed log line")
    line = json.loads(stored)
    assert line["level"] == "error" and "apache-airflow is not installed" in line["event"]
    assert line["worker"] == worker.hostname
    assert (tmp_path / "logs" / WORKLOAD["log_path"]).read_text() == stored
