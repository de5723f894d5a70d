"""The jobs history, written inside the broker's, results' and worker registry's
transactions, on every database."""

from __future__ import annotations

import base64
import json

import pytest
from sqlalchemy import insert

from edge_kombu.server import models as m


def task_message(task_id: str, name: str = "tests.add", *, slots: int = 1,
                 args: list | None = None) -> dict:
    """A Celery protocol 2 message as kombu's virtual transport sends it."""
    body = base64.b64encode(json.dumps([args or [], {}, {}]).encode()).decode()
    return {
        "body": body,
        "headers": {"id": task_id, "task": name, "pool_slots": slots},
        "properties": {"body_encoding": "base64", "delivery_mode": 2},
        "content-type": "application/json",
    }


def airflow_message(task_id: str) -> dict:
    workload = {"ti": {"dag_id": "etl", "task_id": "load", "run_id": "manual__1",
                       "map_index": 3, "try_number": 2, "pool_slots": 2}}
    return task_message(task_id, "execute_workload", slots=2, args=[json.dumps(workload)])


def test_a_task_goes_from_queued_to_success(broker, results, jobs, registry):
    workers = registry
    broker.publish("", "remote", task_message("t-1", slots=2))
    assert jobs.page()["jobs"][0] | {"queued_at": None} == {
        "task_id": "t-1", "name": "tests.add", "queue": "remote", "slots": 2,
        "state": "queued", "worker": None, "queued_at": None, "received_at": None,
        "started_at": None, "finished_at": None,
    }
    broker.touch_session("s-1", "w", ["remote"])
    workers.heartbeat({"name": "w1@host", "instance": "i1", "state": "idle",
                       "queues": ["remote"], "slots_total": 4, "session": "s-1"})
    [delivery] = broker.claim("s-1", [("remote", False)], max_slots=4)
    job = jobs.page()["jobs"][0]
    assert (job["state"], job["worker"]) == ("received", "w1@host")

    workers.heartbeat({"name": "w1@host", "instance": "i1", "state": "running",
                       "queues": ["remote"], "slots_total": 4, "slots_used": 2,
                       "session": "s-1", "running": [{"id": "t-1", "name": "tests.add"}]})
    assert jobs.page()["jobs"][0]["state"] == "running"
    results.set("celery-task-meta-t-1", json.dumps({"status": "SUCCESS"}).encode())
    broker.ack("s-1", [delivery.message["properties"]["delivery_tag"]])
    job = jobs.page()["jobs"][0]
    assert job["state"] == "success"  # the ack after the result does not overwrite it
    assert job["queued_at"] <= job["received_at"] <= job["started_at"] <= job["finished_at"]


def test_without_a_result_the_ack_finishes_the_job(broker, results, jobs):
    broker.publish("", "q", task_message("t-2"))
    broker.touch_session("s-2", "w", ["q"])
    [delivery] = broker.claim("s-2", [("q", False)])
    broker.ack("s-2", [delivery.message["properties"]["delivery_tag"]])
    job = jobs.page()["jobs"][0]
    assert job["state"] == "done" and job["finished_at"] is not None


@pytest.mark.parametrize("status, state", [("FAILURE", "failed"), ("REVOKED", "revoked"),
                                           ("RETRY", "retry"), ("STARTED", "running")])
def test_result_status_sets_the_state(broker, results, jobs, status, state):
    broker.publish("", "q", task_message("t-3"))
    results.set("celery-task-meta-t-3", json.dumps({"status": status}).encode())
    assert jobs.page()["jobs"][0]["state"] == state


def test_airflow_workloads_show_their_task_instance(broker, results, jobs):
    broker.publish("", "default", airflow_message("af-1"))
    job = jobs.page()["jobs"][0]
    assert job["airflow"] == {"dag_id": "etl", "task_id": "load", "run_id": "manual__1",
                              "map_index": 3, "try_number": 2}
    assert job["slots"] == 2


def test_control_messages_and_replies_are_not_jobs(broker, results, jobs):
    broker.declare_exchange("celery.pidbox", "fanout")
    broker.declare_queue("w1.celery.pidbox")
    broker.bind("w1.celery.pidbox", "celery.pidbox", "")
    broker.publish("celery.pidbox", "", {"body": "e30=", "headers": {"clock": 1},
                                        "properties": {"body_encoding": "base64"}})
    broker.publish("", "reply", {"body": "e30=", "properties": {}})
    assert jobs.page()["jobs"] == []


def test_filters_and_keyset_pages(broker, results, jobs):
    for i in range(7):
        broker.publish("", "a" if i % 2 else "b", task_message(f"job-{i}", f"tests.t{i % 3}"))
    first = jobs.page(limit=3)
    assert [j["task_id"] for j in first["jobs"]] == ["job-6", "job-5", "job-4"]
    second = jobs.page(limit=3, before=first["next"])
    assert [j["task_id"] for j in second["jobs"]] == ["job-3", "job-2", "job-1"]
    third = jobs.page(limit=3, before=second["next"])
    assert [j["task_id"] for j in third["jobs"]] == ["job-0"] and third["next"] is None
    assert [j["task_id"] for j in jobs.page(queue="a")["jobs"]] == ["job-5", "job-3",
                                                                           "job-1"]
    assert [j["task_id"] for j in jobs.page(text="t2")["jobs"]] == ["job-5", "job-2"]
    assert jobs.page(text="100%_")["jobs"] == []  # LIKE wildcards are literal


def test_paging_100k_jobs_reads_an_index(sql, jobs):
    now = sql.clock()
    rows = [{"task_id": f"bulk-{i}", "name": "tests.bulk", "queue": f"q{i % 10}", "slots": 1,
             "state": ("success", "failed", "running")[i % 3], "worker": f"w{i % 50}",
             "queued_at": now + i} for i in range(100_000)]
    with sql.engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            conn.execute(insert(m.job), rows[start:start + 10_000])
    if sql.engine.dialect.name == "postgresql":
        with sql.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE edge_kombu_job")

    deep = jobs.page(state="failed", queue="q4", limit=50)
    assert len(deep["jobs"]) == 50 and {j["state"] for j in deep["jobs"]} == {"failed"}
    later = jobs.page(state="failed", queue="q4", limit=50, before=deep["next"])
    assert later["jobs"][0]["task_id"] != deep["jobs"][-1]["task_id"]
    assert len(jobs.page(limit=500, before=60_000)["jobs"]) == 500

    for filters in ({}, {"state": "failed"}, {"queue": "q3"}, {"worker": "w7"},
                    {"before": 50_000}):
        plan = jobs.page_plan(**filters).lower()
        # Newest first straight from the primary key or a (column, seq) index, stopping
        # after one page: never a sort of every matching row.
        assert not any(word in plan for word in ("temp b-tree", "filesort", "sort ")), \
            (filters, plan)
        uses = ("index", "scan edge_kombu_job", "primary", "ix_edge_kombu_job")
        assert any(word in plan for word in uses), (filters, plan)


def test_jobs_command_pages_and_filters(broker, results, jobs, db_url):
    import subprocess

    from tests.helpers import BIN

    for i in range(3):
        broker.publish("", "cli", task_message(f"cli-{i}"))
    broker.publish("", "default", airflow_message("cli-af"))

    def run(*args: str) -> str:
        done = subprocess.run([str(BIN / "edge-kombu"), "jobs", "--db", db_url, *args],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    first = run("--limit", "2")
    assert "cli-af" in first and "etl.load manual__1" in first and "cli-2" in first
    cursor = first.strip().splitlines()[-1].split()[-1]
    assert "cli-1" in run("--limit", "2", "--before", cursor)
    assert json.loads(run("--queue", "cli", "--json"))["jobs"][0]["task_id"] == "cli-2"


def test_queue_charts_sample_depth_and_count_finished_jobs(broker, results, jobs):
    broker.publish("", "charts", task_message("c-1"))
    broker.publish("", "charts", task_message("c-2"))
    broker.declare_queue("w1@host.celery.pidbox")
    jobs.sample_queues(broker.queue_overview())
    results.set("celery-task-meta-c-1", json.dumps({"status": "SUCCESS"}).encode())
    history = jobs.history(minutes=60)
    series = history["queues"]["charts"]
    # This minute's sample (the previous one, should the minute have turned meanwhile).
    assert [v for v in series["ready"] if v is not None] == [2]
    assert 2 in series["ready"][-2:] and sum(series["done"]) == 1
    assert "w1@host.celery.pidbox" not in history["queues"]


def test_a_redelivery_after_success_keeps_the_history(sql, clock, registry):
    """The ack of a finished task was lost, its message comes again and the re-run is
    refused (Airflow's task-instance guard): the job keeps its state and times."""
    from edge_kombu.server.broker import Broker
    from edge_kombu.server.jobs import JobHistory
    from edge_kombu.server.results import Results
    from edge_kombu.server.sql import SQL
    from edge_kombu.server.workers import WorkerRegistry

    kernel = SQL(sql.engine, clock=clock)
    jobs = JobHistory(kernel)
    broker = Broker(kernel, history=jobs)
    results = Results(kernel, history=jobs)
    workers = WorkerRegistry(kernel, broker=broker, jobs=jobs)
    beat = {"name": "w1@host", "instance": "i1", "state": "running", "queues": ["q"],
            "slots_total": 4, "session": "s-1"}
    broker.publish("", "q", task_message("t-9"))
    broker.touch_session("s-1", "w", ["q"])
    workers.heartbeat(beat)
    clock.advance(1)
    broker.claim("s-1", [("q", False)])
    clock.advance(1)
    results.set("celery-task-meta-t-9", json.dumps({"status": "STARTED"}).encode())
    workers.heartbeat(beat | {"running": [{"id": "t-9", "name": "tests.add"}]})
    clock.advance(1)
    results.set("celery-task-meta-t-9", json.dumps({"status": "SUCCESS"}).encode())
    before = jobs.page()["jobs"][0]
    assert before["state"] == "success"

    clock.advance(5)
    broker.close_session("s-1")  # the ack never came: the lease goes back
    broker.touch_session("s-2", "w", ["q"])
    workers.heartbeat(beat | {"session": "s-2"})
    [again] = broker.claim("s-2", [("q", False)])
    assert again.message["properties"]["delivery_info"]["redelivered"]
    workers.heartbeat(beat | {"session": "s-2", "running": [{"id": "t-9", "name": "tests.add"}]})
    results.set("celery-task-meta-t-9", json.dumps({"status": "STARTED"}).encode())
    results.set("celery-task-meta-t-9", json.dumps({"status": "FAILURE"}).encode())
    broker.ack("s-2", [again.message["properties"]["delivery_tag"]])
    assert jobs.page()["jobs"][0] == before


def test_the_first_run_finishing_during_a_redelivery_keeps_its_history(sql, clock):
    """A worker cut off longer than the lease: its message went to another worker, then the
    first run's outcome arrived. The second delivery, refused as a duplicate, changes
    nothing after that: not the state, worker or times."""
    from edge_kombu.server.broker import Broker
    from edge_kombu.server.jobs import JobHistory
    from edge_kombu.server.results import Results
    from edge_kombu.server.sql import SQL
    from edge_kombu.server.workers import WorkerRegistry

    kernel = SQL(sql.engine, clock=clock)
    jobs = JobHistory(kernel)
    broker = Broker(kernel, history=jobs)
    results = Results(kernel, history=jobs)
    workers = WorkerRegistry(kernel, broker=broker, jobs=jobs)

    def beat(name: str, session: str, running: bool) -> dict:
        return {"name": name, "instance": name, "state": "running", "queues": ["q"],
                "slots_total": 4, "session": session,
                "running": [{"id": "t-20", "name": "tests.add"}] if running else []}

    broker.publish("", "q", task_message("t-20"))
    broker.touch_session("s-a", "w", ["q"])
    workers.heartbeat(beat("a@host", "s-a", False))
    [first] = broker.claim("s-a", [("q", False)])
    clock.advance(1)
    workers.heartbeat(beat("a@host", "s-a", True))
    clock.advance(40)
    broker.close_session("s-a")  # its lease ran out while it was cut off
    broker.touch_session("s-b", "w", ["q"])
    workers.heartbeat(beat("b@host", "s-b", False))
    [second] = broker.claim("s-b", [("q", False)])
    assert jobs.page()["jobs"][0]["worker"] == "b@host"  # a real redelivery, as far as known
    clock.advance(1)
    results.set("celery-task-meta-t-20", json.dumps({"status": "SUCCESS"}).encode())  # from a
    finished = jobs.page()["jobs"][0]
    assert finished["state"] == "success"

    clock.advance(1)
    workers.heartbeat(beat("b@host", "s-b", True))
    results.set("celery-task-meta-t-20", json.dumps({"status": "STARTED"}).encode())
    results.set("celery-task-meta-t-20", json.dumps({"status": "FAILURE"}).encode())
    broker.ack("s-b", [second.message["properties"]["delivery_tag"]])
    assert broker.ack("s-a", [first.message["properties"]["delivery_tag"]])[0] == 0
    assert jobs.page()["jobs"][0] == finished


def test_a_result_after_an_early_ack_still_tells_the_outcome(broker, results, jobs):
    broker.publish("", "q", task_message("t-10"))
    broker.touch_session("s-3", "w", ["q"])
    [delivery] = broker.claim("s-3", [("q", False)])
    broker.ack("s-3", [delivery.message["properties"]["delivery_tag"]])  # acks_late off
    assert jobs.page()["jobs"][0]["state"] == "done"
    results.set("celery-task-meta-t-10", json.dumps({"status": "SUCCESS"}).encode())
    assert jobs.page()["jobs"][0]["state"] == "success"


def test_a_claim_of_several_leaves_finished_jobs_alone(broker, results, jobs):
    for task_id in ("t-11", "t-12"):
        broker.publish("", "q", task_message(task_id))
    results.set("celery-task-meta-t-11", json.dumps({"status": "SUCCESS"}).encode())
    broker.touch_session("s-4", "w", ["q"])
    assert len(broker.claim("s-4", [("q", False)], max_messages=2)) == 2
    states = {job["task_id"]: job["state"] for job in jobs.page()["jobs"]}
    assert states == {"t-11": "success", "t-12": "received"}
