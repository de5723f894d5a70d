"""Airflow end to end: api-server (with the edge API), scheduler, dag-processor and one edge
worker run a DAG triggered from the CLI; its edge tasks run on the edge worker, whose
``[database] sql_alchemy_conn`` cannot be opened."""

from __future__ import annotations

import re
import sqlite3

from tests.airflow.site import AirflowSite
from tests.helpers import wait_for

HELLO_DAG = '''
from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task


def _site() -> str:
    return os.environ.get("EDGE_SITE", "central")  # set only in the edge worker's environment


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def edge_hello():
    task(task_id="default_executor")(_site)()
    # As written for Airflow's edge executor: the executor named by its class name.
    task(task_id="edge_by_name", executor="EdgeExecutor", pool_slots=2)(_site)()
    task(task_id="local", executor="LocalExecutor")(_site)()


edge_hello()
'''


def test_dag_runs_on_the_edge_worker(tmp_path):
    """EdgeExecutor first (the default) beside the LocalExecutor."""
    site = AirflowSite(tmp_path, executor="edge_kombu.airflow.EdgeExecutor,LocalExecutor")
    site.add_dag("edge_hello.py", HELLO_DAG)
    try:
        site.start_central()
        worker = site.start_edge_worker("edge1", queues="default", EDGE_SITE="wisconsin")
        site.wait_for_dag("edge_hello")

        site.airflow("dags", "trigger", "edge_hello", "--run-id", "e2e_1")
        state = site.wait_for_dag_run("edge_hello", "e2e_1")
        assert state == "success", site.logs()

        tis = {ti["task_id"]: ti for ti in site.task_instances("edge_hello", "e2e_1")}
        assert {name: ti["state"] for name, ti in tis.items()} == {
            "default_executor": "success", "edge_by_name": "success", "local": "success"}
        ran_at = {name: site.xcom("edge_hello", "e2e_1", name) for name in tis}
        assert ran_at == {"default_executor": "wisconsin", "edge_by_name": "wisconsin",
                          "local": "central"}

        # The task runner reports success before the Celery task returns.
        wait_for(lambda: len(re.findall(r"Task execute_workload\[.*\] succeeded",
                                        worker.log())) == 2,
                 timeout=30, message="two Celery tasks succeeded on the edge worker")
        with sqlite3.connect(site.db_path) as conn:  # the edge API's state: Airflow's DB
            assert conn.execute("SELECT name FROM edge_kombu_worker").fetchall() == [
                ("edge1@localhost",)]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{site.logs()}") from None
    finally:
        site.stop()
