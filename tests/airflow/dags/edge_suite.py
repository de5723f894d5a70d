"""DAGs of the Airflow suite (tests/airflow/test_dag_suite.py), all run by edge workers.

Queues: ``remote`` ([operators] default_queue, served by two workers), ``wisconsin_site``
(one of them) and ``slots`` (a third worker, ``-c 3``). Where a task ran is the hostname
Airflow records for it: each edge worker reports its own name (hostname_callable).
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import (
    DAG,
    BaseOperator,
    Connection,
    PokeReturnValue,
    Variable,
    get_current_context,
    setup,
    task,
    teardown,
)

DAG_ARGS = {"schedule": None, "start_date": pendulum.datetime(2024, 1, 1, tz="UTC"),
            "catchup": False, "tags": ["edge_suite"]}
#: How long each 2-slot task of suite_pool_slots holds its slots: long enough that three
#: of them started together on a 3-slot worker would visibly overlap.
POOL_SLOT_TASK_SECONDS = 2.0


def _multiply(a: int, b: int) -> int:
    return a * b


with DAG(dag_id="suite_operators", **DAG_ARGS):
    BashOperator(task_id="bash_operator", bash_command="echo bash operator $((6 * 7))")
    PythonOperator(task_id="python_operator", python_callable=_multiply, op_args=[6, 7])

    @task
    def decorated() -> str:
        return "decorated"

    @task.branch
    def branch() -> str:
        return "chosen"

    @task
    def chosen() -> str:
        return "chosen ran"

    @task
    def not_chosen() -> str:
        raise RuntimeError("the branch did not choose this task")

    @task.virtualenv(system_site_packages=False)
    def in_virtualenv() -> list:
        import sys

        return [sys.prefix, sys.base_prefix]

    @task.bash
    def bash_decorated() -> str:
        return "echo bash decorator $((2 * 21))"

    @task(executor="LocalExecutor")
    def central() -> str:
        return "ran by the LocalExecutor beside the EdgeExecutor"

    decorated()
    central()
    branch() >> [chosen(), not_chosen()]
    in_virtualenv()
    bash_decorated()


with DAG(dag_id="suite_data", **DAG_ARGS):

    @task(queue="wisconsin_site")
    def write() -> list:
        return [1, 2, 3]

    @task(queue="slots")
    def read(numbers: list) -> list:
        return numbers  # pulled from the XCom the wisconsin_site worker pushed

    @task
    def double(number: int) -> int:
        return 2 * number

    @task
    def total(numbers) -> int:
        return sum(numbers)

    @task
    def read_variable() -> str:
        return Variable.get("edge_suite_greeting")

    @task
    def read_connection() -> dict:
        conn = Connection.get("edge_suite_conn")
        return {"conn_type": conn.conn_type, "host": conn.host, "login": conn.login,
                "port": conn.port, "schema": conn.schema,
                "password_read": conn.password == "s3cret-pw"}

    numbers = write()
    read(numbers)
    total(double.expand(number=numbers))
    read_variable()
    read_connection()
    BashOperator(task_id="templated",
                 bash_command="echo {{ var.value.edge_suite_greeting }} "
                              "{{ conn.edge_suite_conn.host }}")


with DAG(dag_id="suite_setup_teardown", **DAG_ARGS):

    @setup
    def create_resource() -> str:
        return "resource-17"

    @task
    def use_resource(resource: str) -> str:
        return f"used {resource}"

    @teardown
    def delete_resource(resource: str) -> str:
        return f"deleted {resource}"

    resource = create_resource()
    use_resource(resource) >> delete_resource(resource)


with DAG(dag_id="suite_routing", **DAG_ARGS):
    for index in range(3):
        BashOperator(task_id=f"remote_{index}", bash_command="true", queue="remote")
        BashOperator(task_id=f"wisconsin_{index}", bash_command="true",
                     queue="wisconsin_site")


with DAG(dag_id="suite_pool_slots", **DAG_ARGS):
    for index in range(3):
        BashOperator(task_id=f"two_slots_{index}", queue="slots", pool_slots=2,
                     bash_command=f"sleep {POOL_SLOT_TASK_SECONDS}")


with DAG(dag_id="suite_retry", **DAG_ARGS):

    @task(retries=1, retry_delay=timedelta(seconds=0))
    def flaky() -> int:
        try_number = get_current_context()["ti"].try_number
        if try_number == 1:
            raise RuntimeError("fails on the first try, as planned")
        return try_number

    flaky()


with DAG(dag_id="suite_killed_worker", **DAG_ARGS):

    @task(retries=1, retry_delay=timedelta(seconds=0), queue="remote")
    def outlive_the_worker() -> int:
        """Try 1 runs until its worker is killed; try 2 (elsewhere) succeeds."""
        try_number = get_current_context()["ti"].try_number
        if try_number == 1:
            # The task process has a process group of its own, so killing the worker's
            # group leaves it orphaned: exit as soon as the supervisor is gone.
            supervisor = os.getppid()
            print("waiting for my worker to be killed", flush=True)
            deadline = time.monotonic() + 300
            while os.getppid() == supervisor and time.monotonic() < deadline:
                time.sleep(0.1)
            sys.exit(1)
        return try_number

    outlive_the_worker()


def _edge_worker() -> str | None:
    return os.environ.get("EDGE_TEST_WORKER")  # set only in the suite's edge workers


class WaitOnTheTriggerer(BaseOperator):
    """Defers to the triggerer for a second, then resumes on an edge worker."""

    def execute(self, context):
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=1)), method_name="resume",
                   kwargs={"deferred_on": _edge_worker()})

    def resume(self, context, event=None, deferred_on=None) -> list:
        return [deferred_on, _edge_worker()]


with DAG(dag_id="suite_deferred", **DAG_ARGS):
    WaitOnTheTriggerer(task_id="deferrable")

    @task.sensor(poke_interval=1, mode="reschedule", timeout=120)
    def reschedule_sensor() -> PokeReturnValue:
        """Done at its second poke: in between, its slot on the edge worker is free."""
        count = get_current_context()["task_reschedule_count"]
        return PokeReturnValue(is_done=count >= 1, xcom_value=[count, _edge_worker()])

    reschedule_sensor()


with DAG(dag_id="suite_hitl", **DAG_ARGS):
    HITLOperator(task_id="ship_it", subject="Ship the release?", options=["ship", "hold"])
