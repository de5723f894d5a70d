"""The DAG suite of the edge executor docs, end to end through edge workers, on SQLite and
on PostgreSQL (Airflow's metadata database, which also holds the edge tables).

One Airflow site per database: api-server (with the edge API), scheduler (EdgeExecutor
first, LocalExecutor beside it), dag-processor and three edge workers without database
access. Every DAG of tests/airflow/dags is
triggered once when the site is up, so they run side by side; each test then checks one
run. The killed-worker test comes last and runs alone, since it kills a worker.
"""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

import pytest

from tests.airflow.site import AirflowSite
from tests.conftest import scratch_database
from tests.helpers import ROOT, wait_for

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
DAGS = Path(__file__).resolve().parent / "dags"
RUN_ID = "suite"

#: The edge workers: name -> (queues, concurrency).
WORKERS = {
    "edge-remote": ("remote", 2),
    "edge-wisconsin": ("remote,wisconsin_site", 3),
    "edge-slots": ("slots", 3),
}
#: Started as users of Airflow's edge executor start one: ``airflow edge worker -q … -c …``.
VIA_AIRFLOW = {"edge-wisconsin"}
SERVES = {queue: {name for name, (queues, _) in WORKERS.items() if queue in queues.split(",")}
          for queue in ("remote", "wisconsin_site", "slots")}
#: DAGs triggered when the site is up (the killed-worker DAG runs on its own, last).
TRIGGERED = ("suite_operators", "suite_data", "suite_setup_teardown", "suite_routing",
             "suite_pool_slots", "suite_retry", "example_edge_pool_slots", "suite_deferred",
             "suite_hitl")

SUITE_ENV = {
    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": "remote",
    # A task whose worker died is failed (then retried) after 10 s without a heartbeat;
    # its supervisor heartbeats every second ([workers] min_heartbeat_interval).
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "10",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "1",
    # The edge API frees a dead worker's leases within seconds, not the default 30 s.
    "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": "1",
    "EDGE_KOMBU_WORKER_TIMEOUT": "8",
    "EDGE_KOMBU_LEASE_TIMEOUT": "8",
    "EDGE_KOMBU_MAX_WAIT": "3",
}


class Suite:
    """The running site, its workers and the runs triggered in it."""

    def __init__(self, site: AirflowSite, workers: dict) -> None:
        self.site = site
        self.workers = workers

    def finished_run(self, dag_id: str, run_id: str = RUN_ID) -> dict[tuple[str, int], dict]:
        """Wait for the run to finish; its task instances by (task_id, map_index)."""
        state = self.site.wait_for_dag_run(dag_id, run_id, timeout=240)
        tis = self.site.task_instances(dag_id, run_id)
        assert state == "success", self.explain(dag_id, tis)
        return {(ti["task_id"], ti["map_index"]): ti for ti in tis}

    def xcom(self, dag_id: str, task_id: str, run_id: str = RUN_ID):
        return self.site.xcom(dag_id, run_id, task_id)

    def tries(self, dag_id: str, task_id: str, run_id: str = RUN_ID) -> list[dict]:
        answer = self.site.rest("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/"
                                       f"{task_id}/tries")
        answer.raise_for_status()
        return sorted(answer.json()["task_instances"], key=lambda ti: ti["try_number"])

    def trigger(self, dag_id: str, run_id: str = RUN_ID) -> None:
        answer = self.site.rest("POST", f"/dags/{dag_id}/dagRuns",
                                json={"dag_run_id": run_id, "logical_date": None})
        assert answer.status_code == 200, answer.text

    def explain(self, dag_id: str, tis: list[dict]) -> str:
        states = {(ti["task_id"], ti["map_index"]): (ti["state"], ti["hostname"]) for ti in tis}
        return f"{dag_id}: {states}\n{self.site.logs()}"


def _start(site: AirflowSite) -> Suite:
    site.env.update(SUITE_ENV)
    for path in sorted(DAGS.glob("*.py")):
        site.add_dag(path.name, path.read_text())
    site.airflow("db", "migrate")
    site.start_scheduler()
    site.start_dag_processor()
    site.start_triggerer()
    with ThreadPoolExecutor(2) as pool:  # the CLI takes seconds to start: beside the server
        cli = [
            pool.submit(site.airflow, "variables", "set", "edge_suite_greeting",
                        "hello from the center"),
            pool.submit(site.airflow, "connections", "add", "edge_suite_conn", "--conn-uri",
                        "http://edge-user:s3cret-pw@warehouse.example.com:8443/inventory"),
        ]
        site.start_api_server()
        for done in cli:
            done.result()
    workers = {
        name: site.start_edge_worker(
            name, queues=queues, concurrency=concurrency, wait_ready=False,
            via_airflow=name in VIA_AIRFLOW,
            EDGE_TEST_WORKER=name, PYTHONPATH=str(ROOT),
            AIRFLOW__CORE__HOSTNAME_CALLABLE="tests.airflow.worker_hostname.worker_name",
        )
        for name, (queues, concurrency) in WORKERS.items()
    }
    for name, worker in workers.items():
        wait_for(lambda worker=worker: " ready." in worker.log(), timeout=90, interval=0.2,
                 message=f"edge worker {name} ready")
    suite = Suite(site, workers)
    for dag_id in (*TRIGGERED, "suite_killed_worker"):
        site.wait_for_dag(dag_id)
    for dag_id in TRIGGERED:
        suite.trigger(dag_id)
    return suite


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def suite(request, tmp_path_factory):
    with ExitStack() as stack:
        db_url = None
        if request.param == "postgres":
            db_url = stack.enter_context(scratch_database(POSTGRES_URL))
        site = AirflowSite(tmp_path_factory.mktemp(f"suite-{request.param}"), db_url=db_url,
                           executor="edge_kombu.airflow.EdgeExecutor,LocalExecutor")
        stack.callback(site.stop)
        try:
            started = _start(site)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{site.logs()}") from None
        yield started


def _states(tis: dict) -> dict[str, str]:
    return {task_id if map_index < 0 else f"{task_id}[{map_index}]": ti["state"]
            for (task_id, map_index), ti in tis.items()}


def _ran_on(tis: dict, task_id: str, map_index: int = -1) -> str:
    return tis[(task_id, map_index)]["hostname"]


def test_operators_and_decorators(suite):
    tis = suite.finished_run("suite_operators")
    assert _states(tis) == {
        "bash_operator": "success", "python_operator": "success", "decorated": "success",
        "branch": "success", "chosen": "success", "not_chosen": "skipped",
        "in_virtualenv": "success", "bash_decorated": "success", "central": "success",
    }
    for (task_id, _), ti in tis.items():
        if task_id == "central":
            assert ti["hostname"] not in WORKERS, ti["hostname"]
        elif ti["state"] == "success":
            assert ti["hostname"] in SERVES["remote"], (task_id, ti["hostname"])
    xcom = {task_id: suite.xcom("suite_operators", task_id) for task_id in (
        "bash_operator", "python_operator", "decorated", "chosen", "bash_decorated")}
    assert xcom == {"bash_operator": "bash operator 42", "python_operator": 42,
                    "decorated": "decorated", "chosen": "chosen ran",
                    "bash_decorated": "bash decorator 42"}
    prefix, base_prefix = suite.xcom("suite_operators", "in_virtualenv")
    assert prefix != base_prefix  # the callable ran in a virtualenv of its own
    assert Path(prefix).name.startswith("venv") and not Path(prefix).exists()


def test_mapping_xcom_across_workers_variables_connections(suite):
    tis = suite.finished_run("suite_data")
    assert _states(tis) == {
        "write": "success", "read": "success", "double[0]": "success",
        "double[1]": "success", "double[2]": "success", "total": "success",
        "read_variable": "success", "read_connection": "success", "templated": "success",
    }
    # Pushed on one worker, pulled on another, through the Execution API.
    assert (_ran_on(tis, "write"), _ran_on(tis, "read")) == ("edge-wisconsin", "edge-slots")
    assert suite.xcom("suite_data", "read") == [1, 2, 3]
    assert suite.xcom("suite_data", "total") == 12
    assert suite.xcom("suite_data", "read_variable") == "hello from the center"
    assert suite.xcom("suite_data", "read_connection") == {
        "conn_type": "http", "host": "warehouse.example.com", "login": "edge-user",
        "port": 8443, "schema": "inventory", "password_read": True}
    assert suite.xcom("suite_data", "templated") == "hello from the center warehouse.example.com"


def test_setup_and_teardown(suite):
    tis = suite.finished_run("suite_setup_teardown")
    assert _states(tis) == {"create_resource": "success", "use_resource": "success",
                            "delete_resource": "success"}
    assert suite.xcom("suite_setup_teardown", "use_resource") == "used resource-17"
    assert suite.xcom("suite_setup_teardown", "delete_resource") == "deleted resource-17"


def test_queue_routing(suite):
    tis = suite.finished_run("suite_routing")
    assert len(tis) == 6
    for (task_id, _), ti in tis.items():
        assert ti["state"] == "success", task_id
        assert ti["queue"] == ("remote" if task_id.startswith("remote") else "wisconsin_site")
        assert ti["hostname"] in SERVES[ti["queue"]], (task_id, ti["queue"], ti["hostname"])


def test_two_slot_tasks_never_overlap_on_a_three_slot_worker(suite):
    tis = suite.finished_run("suite_pool_slots")
    assert len(tis) == 3
    assert {ti["hostname"] for ti in tis.values()} == {"edge-slots"}
    assert {ti["pool_slots"] for ti in tis.values()} == {2}
    spans = sorted((datetime.fromisoformat(ti["start_date"]),
                    datetime.fromisoformat(ti["end_date"])) for ti in tis.values())
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two 2-slot tasks overlapped on a 3-slot worker: {spans}"


def test_example_edge_pool_slots_from_the_docs(suite):
    tis = suite.finished_run("example_edge_pool_slots")
    ti = tis[("task_with_template", -1)]
    assert ti["state"] == "success"
    assert ti["pool_slots"] == 2
    assert ti["hostname"] in SERVES["remote"]


def test_failing_task_is_retried(suite):
    tis = suite.finished_run("suite_retry")
    assert tis[("flaky", -1)]["try_number"] == 2
    assert suite.xcom("suite_retry", "flaky") == 2
    tries = suite.tries("suite_retry", "flaky")
    assert [(t["try_number"], t["state"]) for t in tries] == [(1, "failed"), (2, "success")]


def test_deferrable_task_and_reschedule_sensor(suite):
    """A task deferred on an edge worker waits in the triggerer and resumes on an edge
    worker; a sensor in reschedule mode frees its slot between pokes (two pokes, one try)."""
    tis = suite.finished_run("suite_deferred")
    assert _states(tis) == {"deferrable": "success", "reschedule_sensor": "success"}
    deferred_on, resumed_on = suite.xcom("suite_deferred", "deferrable")
    assert {deferred_on, resumed_on} <= SERVES["remote"]
    assert resumed_on == _ran_on(tis, "deferrable")
    assert tis[("deferrable", -1)]["try_number"] == 1
    reschedules, poked_on = suite.xcom("suite_deferred", "reschedule_sensor")
    assert reschedules == 1 and poked_on in SERVES["remote"]
    assert tis[("reschedule_sensor", -1)]["try_number"] == 1


def test_human_in_the_loop_task_waits_for_input_given_through_the_rest_api(suite):
    path = f"/dags/suite_hitl/dagRuns/{RUN_ID}/taskInstances/ship_it"

    def awaiting_input() -> bool:
        return suite.site.rest("GET", path).json()["state"] == "awaiting_input"

    wait_for(awaiting_input, timeout=120, interval=0.2, message="HITL task awaiting input")
    answer = suite.site.rest("PATCH", f"{path}/-1/hitlDetails",
                             json={"chosen_options": ["ship"], "params_input": {}})
    assert answer.status_code == 200, answer.text
    tis = suite.finished_run("suite_hitl")
    ti = tis[("ship_it", -1)]
    assert (ti["state"], ti["try_number"]) == ("success", 1)
    assert ti["hostname"] in SERVES["remote"]  # resumed on an edge worker
    assert suite.xcom("suite_hitl", "ship_it")["chosen_options"] == ["ship"]


def test_worker_killed_mid_task_is_retried_on_another_worker(suite):
    """Last: it kills a worker. Alone: no other task may die with that worker."""
    for dag_id in TRIGGERED:
        suite.site.wait_for_dag_run(dag_id, RUN_ID, timeout=240)
    suite.trigger("suite_killed_worker")

    def running_on() -> str | None:
        answer = suite.site.rest("GET", f"/dags/suite_killed_worker/dagRuns/{RUN_ID}/"
                                        "taskInstances/outlive_the_worker")
        ti = answer.json()
        return ti["state"] == "running" and ti["try_number"] == 1 and ti["hostname"]

    victim = wait_for(running_on, timeout=120, interval=0.2,
                      message="try 1 running on an edge worker")
    assert victim in SERVES["remote"]
    worker = suite.workers[victim]
    worker.kill(signal.SIGKILL)  # the whole process group: main process, pool, supervisors
    worker.proc.wait(10)

    tis = suite.finished_run("suite_killed_worker")
    assert suite.xcom("suite_killed_worker", "outlive_the_worker") == 2
    tries = suite.tries("suite_killed_worker", "outlive_the_worker")
    (survivor,) = SERVES["remote"] - {victim}
    assert [(t["try_number"], t["state"], t["hostname"]) for t in tries] == [
        (1, "failed", victim), (2, "success", survivor)], tis
