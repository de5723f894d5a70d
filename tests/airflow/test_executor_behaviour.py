"""The edge executor's hand-out order and Airflow 3.3's other workloads, with real Airflow
processes on one SQLite site (the order is the edge API's, the same on every database).

A DAG run's three tasks (``priority_weight`` 1, 300 and 1000, ``weight_rule`` absolute)
and the callback of its missed deadline alert wait on a queue no worker serves yet; then
one edge worker with one slot starts on it and takes the callback first, then the tasks
by weight. The same worker then runs a connection test asked for through the REST API.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime

import pytest

from tests.airflow.site import AirflowSite
from tests.helpers import wait_for

pytestmark = pytest.mark.sqlite_only

QUEUE = "late"  # [operators] default_queue: tasks and callbacks go there
WEIGHTS = (1, 300, 1000)

WEIGHTS_DAG = '''
from __future__ import annotations

import json
import os
import time
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, DeadlineAlert, DeadlineReference, SyncCallback

MARKER = {marker!r}


def record_missed_deadline(context, note):
    """The deadline alert's callback: where and when it ran (an ExecuteCallback workload)."""
    with open(MARKER, "w") as file:
        json.dump({{"worker": os.environ.get("EDGE_KOMBU_WORKER"), "at": time.time(),
                   "note": note, "run_id": context["dag_run"]["dag_run_id"]}}, file)


with DAG(
    dag_id="weights", schedule=None, start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    deadline=DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT,
                           interval=timedelta(seconds=1),
                           callback=SyncCallback(record_missed_deadline,
                                                 kwargs={{"note": "deadline missed"}})),
):
    for weight in {weights!r}:
        BashOperator(task_id=f"weight_{{weight}}", bash_command="true",
                     priority_weight=weight, weight_rule="absolute")
'''


FAILING_CALLBACK_DAG = '''
from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, DeadlineAlert, DeadlineReference, SyncCallback


def broken_alert(context):
    raise RuntimeError("the pager is down")


with DAG(
    dag_id="failing_callback", schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"), catchup=False,
    deadline=DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT,
                           interval=timedelta(seconds=1), callback=SyncCallback(broken_alert)),
):
    BashOperator(task_id="slow", bash_command="sleep 4")
'''


@pytest.fixture(scope="module")
def late_site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("behaviour")
    site = AirflowSite(tmp)
    site.env.update({"AIRFLOW__OPERATORS__DEFAULT_QUEUE": QUEUE,
                     "AIRFLOW__CORE__TEST_CONNECTION": "Enabled"})
    site.add_dag("weights.py", WEIGHTS_DAG.format(marker=str(tmp / "callback.json"),
                                                  weights=WEIGHTS))
    site.add_dag("failing_callback.py", FAILING_CALLBACK_DAG)
    try:
        site.start_central()
        site.wait_for_dag("weights")
        site.wait_for_dag("failing_callback")
        yield site
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{site.logs()}") from None
    finally:
        site.stop()


def _query(site: AirflowSite, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(site.db_path, timeout=30) as conn:
        return conn.execute(sql, args).fetchall()


def test_callback_first_then_tasks_by_whole_priority_weight(late_site):
    site = late_site
    answer = site.rest("POST", "/dags/weights/dagRuns",
                       json={"dag_run_id": "order", "logical_date": None})
    assert answer.status_code == 200, answer.text

    # Everything waits on the unserved queue: three tasks and the deadline's callback.
    def waiting() -> list | bool:
        rows = _query(site, "SELECT priority FROM edge_kombu_message WHERE queue = ?", QUEUE)
        return len(rows) == 4 and sorted(p for (p,) in rows)

    priorities = wait_for(waiting, timeout=90, interval=0.2,
                          message="3 tasks and 1 callback published to the unserved queue")
    assert priorities == [1, 300, 1000, 2**31 - 1]  # the callback above every task
    assert _query(site, "SELECT type, state FROM callback") == [("executor", "queued")]

    site.start_edge_worker("late", queues=QUEUE, concurrency=1)
    state = site.wait_for_dag_run("weights", "order", timeout=120)
    tis = {ti["task_id"]: ti for ti in site.task_instances("weights", "order")}
    assert state == "success", (tis, site.logs())
    starts = {weight: datetime.fromisoformat(tis[f"weight_{weight}"]["start_date"])
              for weight in WEIGHTS}
    assert sorted(WEIGHTS, key=starts.get) == [1000, 300, 1], starts

    wait_for(lambda: _query(site, "SELECT state FROM callback") == [("success",)],
             timeout=30, interval=0.2, message="the callback recorded as succeeded")
    record = json.loads((site.tmp / "callback.json").read_text())
    assert (record["worker"], record["note"], record["run_id"]) == (
        "late@localhost", "deadline missed", "order")
    assert record["at"] < starts[1000].timestamp()  # before the first task
    assert "executing Airflow workload record_missed_deadline" in site.processes[-1].log()


def _late_worker(site: AirflowSite):
    """The one-slot worker the order test starts (started here when run alone)."""
    worker = next((p for p in site.processes if p.log_path.name == "worker-late.log"), None)
    return worker or site.start_edge_worker("late", queues=QUEUE, concurrency=1)


def test_a_callback_that_raises_is_recorded_as_failed(late_site):
    site = late_site
    worker = _late_worker(site)
    answer = site.rest("POST", "/dags/failing_callback/dagRuns",
                       json={"dag_run_id": "broken", "logical_date": None})
    assert answer.status_code == 200, answer.text
    assert site.wait_for_dag_run("failing_callback", "broken", timeout=120) == "success"

    def failed() -> list:
        return _query(site, "SELECT output FROM callback WHERE state = 'failed'")

    ((output,),) = wait_for(failed, timeout=60, interval=0.2, message="callback failed")
    # The reason from the worker's Celery result (the CeleryExecutor alone: "Execution failed").
    assert output == "Callback subprocess exited with code 1"
    # The callback's own log, on the worker, says why.
    logs = [path for path in (site.home / "logs" / "executor_callbacks").rglob("*")
            if path.is_file()]
    assert any("the pager is down" in path.read_text() for path in logs), (logs, worker.log())


def test_connection_test_from_the_ui_runs_on_the_edge_worker(late_site):
    """POST /connections/enqueue-test (what the UI calls with [core] test_connection
    Enabled): the scheduler hands a TestConnection workload to the EdgeExecutor, the edge
    worker serving the queue runs the hook's test and reports through the Execution API."""
    site = late_site
    worker = _late_worker(site)
    path = site.tmp / "only-checked-by-the-worker"
    path.mkdir()
    answer = site.rest("POST", "/connections/enqueue-test", json={
        "connection_id": "edge_fs", "conn_type": "fs", "extra": json.dumps({"path": str(path)})})
    assert answer.status_code == 202, answer.text
    token = answer.json()["token"]

    def finished() -> dict | None:
        polled = site.rest("GET", "/connections/enqueue-test",
                           headers={"Airflow-Connection-Test-Token": token}).json()
        return polled["state"] in ("success", "failed") and polled

    result = wait_for(finished, timeout=90, interval=0.2, message="connection test finished")
    assert (result["state"], result["result_message"]) == (
        "success", f"Path {path} is existing."), site.logs()
    assert "executing Airflow workload connection-test edge_fs" in worker.log()
