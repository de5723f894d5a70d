"""An edge worker that cannot run a task says so in the task's log, and the task fails.

One site (api-server with the edge API, scheduler, dag-processor) and one edge worker whose
DAG folder is empty: a task of a DAG the site has but the worker lacks fails with the Task
SDK's "Dag not found" line in its log, pushed by the worker and read through Airflow's
REST API from the database. A workload announced by another major Airflow version fails
on the worker with a message naming both versions, also in the try's log.
"""

from __future__ import annotations

import json
import uuid

import pytest
import requests

from tests.airflow.site import AirflowSite
from tests.helpers import wait_for

DAG = '''
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def edge_misplaced():
    task(task_id="needs_the_dag_file", retries=0)(lambda: "ran")()


edge_misplaced()
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("refusal")
    airflow_site = AirflowSite(tmp)
    airflow_site.env["AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS"] = (
        "edge_kombu.airflow.logging_config.LOGGING_CONFIG")
    airflow_site.add_dag("edge_misplaced.py", DAG)
    try:
        airflow_site.start_central()
        (tmp / "worker-dags").mkdir()
        airflow_site.start_edge_worker(
            "edge-nodags", AIRFLOW__CORE__DAGS_FOLDER=str(tmp / "worker-dags"),
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(tmp / "worker-logs"),
            # Fail at once instead of rescheduling (by default 3 times, 60 s apart).
            AIRFLOW__WORKERS__MISSING_DAG_RETRIES="0")
        yield airflow_site
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{airflow_site.logs()}") from None
    finally:
        airflow_site.stop()


def _log_events(site: AirflowSite, dag_id: str, run_id: str, task_id: str) -> list[str]:
    answer = site.rest("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/1",
                       params={"full_content": "true"}, headers={"Accept": "application/json"})
    if answer.status_code == 404:
        return []
    assert answer.status_code == 200, answer.text
    return [str(line.get("event")) for line in answer.json()["content"]]


def test_missing_dag_files_fail_the_task_with_a_log_line_that_says_so(site):
    site.wait_for_dag("edge_misplaced")
    site.airflow("dags", "trigger", "edge_misplaced", "--run-id", "misplaced_1")
    assert site.wait_for_dag_run("edge_misplaced", "misplaced_1") == "failed", site.logs()
    (ti,) = site.task_instances("edge_misplaced", "misplaced_1")
    assert ti["state"] == "failed" and ti["hostname"], ti  # it started on the edge worker
    # Read from the database: the api-server has no access to the worker's log folder.
    events = wait_for(lambda: (e := _log_events(site, "edge_misplaced", "misplaced_1",
                                                "needs_the_dag_file"))
                      and any("Dag not found" in line for line in e) and e,
                      timeout=30, message="the pushed 'Dag not found' line")
    assert any("Dag not found during start up" in line for line in events), events


def test_another_major_airflow_version_fails_on_the_worker_saying_so(site):
    from celery import Celery

    from edge_kombu.server.logs import TaskInstanceTry, TaskLogs
    from edge_kombu.server.sql import SQL

    ti = {"id": str(uuid.uuid4()), "dag_id": "old_site", "task_id": "t", "run_id": "r",
          "try_number": 1, "map_index": -1, "pool_slots": 1, "queue": "default",
          "priority_weight": 1}
    workload = {"type": "ExecuteTask", "token": "unused", "ti": ti, "dag_rel_path": "x.py",
                "bundle_info": {"name": "dags-folder"},
                "log_path": "dag_id=old_site/run_id=r/task_id=t/attempt=1.log"}
    url = site.edge_url.replace("http://", "edge+http://")
    options = {"secret": site.env["AIRFLOW__CORE__INTERNAL_API_SECRET_KEY"]}
    app = Celery("old_scheduler", broker=url, backend=url, set_as_current=False)
    app.conf.update(broker_transport_options=options, result_backend_transport_options=options)
    try:
        result = app.send_task("execute_workload", args=(json.dumps(workload),),
                               queue="default", headers={"airflow_version": "2.10.5"})
        result.get(timeout=60, propagate=False)
        assert result.state == "FAILURE"
        assert ("runs Airflow 3.3.2, the central site Airflow 2.10.5: the major versions must "
                "be the same; install apache-airflow==2.10.5") in str(result.result)
    finally:
        app.close()

    sql = SQL.from_url(site.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"], pool_size=1)
    try:
        stored = TaskLogs(sql).read(TaskInstanceTry(
            dag_id="old_site", task_id="t", run_id="r", map_index=-1, try_number=1)).data
    finally:
        sql.dispose()
    line = json.loads(stored)
    assert line["level"] == "error" and "the central site Airflow 2.10.5" in line["event"]
    assert requests.get(f"{site.edge_url}/api/v1/health", timeout=10).ok
