"""The EdgeExecutor against a real edge API: loading, publishing, state sync, revoke."""

from __future__ import annotations

import json
import shutil
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from edge_kombu.server import models
from tests.airflow.site import stop_celery_worker
from tests.helpers import BIN, Process, wait_for


def test_executor_loads_alone_beside_others_and_by_class_name(site):
    code = textwrap.dedent("""
        import json
        from airflow.executors.executor_loader import ExecutorLoader
        loaded = ExecutorLoader.init_executors()
        by_class = ExecutorLoader.load_executor("EdgeExecutor")
        print("RESULT", json.dumps([[type(e).__name__ for e in loaded], type(by_class).__module__,
                                    by_class.celery_app.conf.broker_url]))
    """)

    def run(**overrides) -> list:
        lines = site.python(code, **overrides).splitlines()
        return json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])

    broker = f"edge+{site.edge_url}"
    assert run(AIRFLOW__CORE__EXECUTOR="LocalExecutor,edge_kombu.airflow.EdgeExecutor") == [
        ["LocalExecutor", "EdgeExecutor"], "edge_kombu.airflow.executor", broker]
    assert run() == [["EdgeExecutor"], "edge_kombu.airflow.executor", broker]


@pytest.fixture
def edge_env(airflow_in_process, monkeypatch, api_factory, token):
    """The in-process Airflow configured for an edge API (with an access log) and a token."""
    api = api_factory(extra=["--access-log"])
    monkeypatch.setenv("AIRFLOW__EDGE__API_URL", api.url)
    monkeypatch.setenv("EDGE_KOMBU_TOKEN", token)
    return api


@pytest.fixture
def executor(edge_env):
    from edge_kombu.airflow import EdgeExecutor

    executor = EdgeExecutor()
    executor.start()
    yield executor
    executor.end()


def _workload(*, queue: str = "default", pool_slots: int = 1, priority_weight: int = 1):
    from airflow.executors.workloads import BundleInfo, ExecuteTask, TaskInstanceDTO

    ti = TaskInstanceDTO(
        id=uuid.uuid4(), dag_version_id=uuid.uuid4(), dag_id="edge_dag",
        task_id=f"t_{uuid.uuid4().hex[:8]}", run_id="manual_1", try_number=1, queue=queue,
        pool_slots=pool_slots, priority_weight=priority_weight,
        external_executor_id=str(uuid.uuid4()),
    )
    return ExecuteTask(ti=ti, dag_rel_path=Path("edge_dag.py"), token="t", log_path=None,
                       bundle_info=BundleInfo(name="dags-folder"))


def _messages(sql) -> dict[str, dict]:
    """Messages in the edge database by Celery task id."""
    with sql.connect() as conn:
        rows = conn.execute(select(models.message)).mappings().all()
    found = {}
    for row in rows:
        payload = json.loads(row["payload"])
        found[payload["headers"]["id"]] = dict(row, headers=payload["headers"],
                                               properties=payload["properties"])
    return found


def test_missing_api_url_is_a_configuration_error(airflow_in_process, monkeypatch):
    from airflow.exceptions import AirflowConfigException

    from edge_kombu.airflow import EdgeExecutor

    monkeypatch.delenv("AIRFLOW__EDGE__API_URL", raising=False)
    with pytest.raises(AirflowConfigException, match=r"\[edge\] api_url is not set"):
        EdgeExecutor()


def test_publish_timeout_fits_a_wan_round_trip(airflow_in_process, edge_env, monkeypatch):
    from airflow.exceptions import AirflowConfigException

    from edge_kombu.airflow import EdgeExecutor

    assert EdgeExecutor().publish_timeout == 10.0  # not [celery] operation_timeout's 1 s
    monkeypatch.setenv("AIRFLOW__EDGE__PUBLISH_TIMEOUT", "2.5")
    assert EdgeExecutor().publish_timeout == 2.5
    monkeypatch.setenv("AIRFLOW__EDGE__PUBLISH_TIMEOUT", "soon")
    with pytest.raises(AirflowConfigException, match=r"\[edge\] publish_timeout must be"):
        EdgeExecutor()


def test_a_workload_published_again_is_stored_once(executor, sql):
    """The scheduler publishes again after its publish timed out, though the first one got
    through: the same task id and retry count, so the edge API stores it once."""
    from edge_kombu.airflow.executor import send_workload

    workload = _workload()
    item = (workload.ti.key, workload, "default", None)
    first = send_workload(executor.celery_app, item, seconds=executor.publish_timeout)[2]
    again = send_workload(executor.celery_app, item, seconds=executor.publish_timeout)[2]
    assert first.id == again.id == workload.ti.external_executor_id
    with sql.connect() as conn:
        stored = conn.execute(select(models.message.c.id)).all()
    assert len(stored) == 1


def test_publishes_slots_priority_and_queue_and_syncs_with_one_mget(executor, edge_env, sql):
    from airflow.utils.state import TaskInstanceState

    big = _workload(queue="remote", pool_slots=3, priority_weight=1000)
    small = _workload(priority_weight=7)
    negative = _workload(priority_weight=-5)
    for workload in (big, small, negative):
        executor.queue_workload(workload, session=None)
    executor.heartbeat()  # publishes, then syncs once

    messages = _messages(sql)
    assert set(messages) == {w.ti.external_executor_id for w in (big, small, negative)}
    by_ti = {w.ti.key: messages[w.ti.external_executor_id] for w in (big, small, negative)}
    assert (by_ti[big.ti.key]["queue"], by_ti[big.ti.key]["slots"],
            by_ti[big.ti.key]["priority"]) == ("remote", 3, 1000)
    assert by_ti[big.ti.key]["headers"]["pool_slots"] == 3
    assert by_ti[big.ti.key]["headers"]["airflow_version"] == "3.3.2"  # checked by the worker
    assert (by_ti[small.ti.key]["queue"], by_ti[small.ti.key]["slots"],
            by_ti[small.ti.key]["priority"]) == ("default", 1, 7)
    assert by_ti[negative.ti.key]["priority"] == -5
    assert by_ti[small.ti.key]["headers"]["task"] == "execute_workload"
    assert executor.event_buffer[small.ti.key] == (TaskInstanceState.QUEUED,
                                                   small.ti.external_executor_id)

    backend = executor.celery_app.backend  # what a worker would write
    backend.store_result(big.ti.external_executor_id, None, "SUCCESS")
    backend.store_result(small.ti.external_executor_id, RuntimeError("boom"), "FAILURE")
    executor.sync()
    assert executor.event_buffer[big.ti.key][0] == TaskInstanceState.SUCCESS
    assert executor.event_buffer[small.ti.key][0] == TaskInstanceState.FAILED
    assert set(executor.workloads) == {negative.ti.key}
    mgets = wait_for(lambda: edge_env.log().count("/api/v1/results/mget") >= 2 and
                     edge_env.log().count("/api/v1/results/mget"), message="access log")
    assert mgets == 2  # one request per sync


def test_callbacks_and_connection_tests_are_published_before_tasks(executor, sql):
    """Airflow 3.3's ExecuteCallback (to [operators] default_queue) and TestConnection (to
    the queue asked for) go out above every task weight, under their own ids."""
    from airflow.executors.workloads import BundleInfo, ExecuteCallback, TestConnection
    from airflow.executors.workloads.callback import CallbackDTO, CallbackFetchMethod
    from airflow.utils.state import CallbackState

    callback = ExecuteCallback(
        callback=CallbackDTO(id=str(uuid.uuid4()), fetch_method=CallbackFetchMethod.IMPORT_PATH,
                             data={"path": "alerts.notify", "kwargs": {}}),
        dag_rel_path=Path("edge_dag.py"), token="t", log_path="executor_callbacks/x",
        bundle_info=BundleInfo(name="dags-folder"))
    test = TestConnection(connection_test_id=uuid.uuid4(), connection_id="warehouse",
                          timeout=30, queue="remote", token="t")
    task = _workload(priority_weight=2**31 - 2)
    executor.queue_workload(task, session=None)
    executor.queue_workload(callback, session=None)
    executor.queue_workload(test, session=None)
    executor.heartbeat()
    executor.trigger_connection_tests()  # what the scheduler's heartbeat calls next

    messages = _messages(sql)
    assert (messages[callback.callback.id]["queue"],
            messages[callback.callback.id]["priority"]) == ("default", 2**31 - 1)
    test_id = str(test.connection_test_id)
    assert (messages[test_id]["queue"], messages[test_id]["priority"]) == ("remote", 2**31 - 1)
    assert messages[task.ti.external_executor_id]["priority"] == 2**31 - 2
    assert not executor.queued_callbacks and not executor.queued_connection_tests
    assert {callback.key, test.key, task.ti.key} <= executor.running

    backend = executor.celery_app.backend
    backend.store_result(callback.callback.id, RuntimeError("callback exited with 1"),
                         "FAILURE")
    executor.sync()
    state, info = executor.event_buffer[callback.key]
    assert state == CallbackState.FAILED
    assert str(info) == "callback exited with 1"  # kept by Airflow as the callback's output


def test_parallelism_counts_queued_and_running_edge_workloads(executor, sql):
    """[core] parallelism bounds what is queued in the executor plus what runs on edge
    workers (a published workload counts until its result is read), as in every executor:
    the scheduler queues no more than ``slots_available``, and a heartbeat publishes no more
    than ``parallelism`` minus what runs."""
    executor.parallelism = 2
    first, second, third, fourth = (_workload(priority_weight=w) for w in (4, 3, 2, 1))
    assert executor.slots_available == 2
    for workload in (first, second):
        executor.queue_workload(workload, session=None)
    assert (executor.slots_available, executor.slots_occupied) == (0, 2)  # queued ones count
    executor.heartbeat()
    assert set(_messages(sql)) == {w.ti.external_executor_id for w in (first, second)}
    assert (executor.slots_available, executor.slots_occupied) == (0, 2)  # running ones count

    # More queued than parallelism allows (e.g. a second scheduler loop): none published.
    for workload in (third, fourth):
        executor.queue_workload(workload, session=None)
    executor.heartbeat()
    assert len(_messages(sql)) == 2

    executor.celery_app.backend.store_result(first.ti.external_executor_id, None, "SUCCESS")
    executor.heartbeat()  # publishes into the slots free before it, then reads the result
    executor.heartbeat()  # one slot free: the higher weight of the two waiting
    published = set(_messages(sql))
    assert third.ti.external_executor_id in published
    assert fourth.ti.external_executor_id not in published
    assert len(published) == 3 and len(executor.running) == 2


def test_revoke_reaches_the_edge_worker(executor, edge_env, token, sql, tmp_path):
    """A revoked workload is discarded by the worker that receives it (REVOKED, acked)."""
    from celery.result import AsyncResult

    run_dir = tempfile.mkdtemp(prefix="edge-run-")  # AF_UNIX paths must stay short
    worker = Process(
        [str(BIN / "celery"), "-A", "edge_kombu", "worker", "-Q", "remote", "-c", "1",
         "-n", "revoker@localhost", "-l", "info"],
        tmp_path / "worker-revoker.log",
        env={"AIRFLOW_HOME": str(tmp_path / "worker_home"), "EDGE_KOMBU_TOKEN": token,
             "AIRFLOW__EDGE__API_URL": edge_env.url, "EDGE_KOMBU_RUN_DIR": run_dir},
    ).start()
    try:
        wait_for(lambda: " ready." in worker.log() or not worker.alive(), timeout=60,
                 message="edge worker ready")
        assert worker.alive(), worker.log()
        control = executor.celery_app.control
        hostname = ["revoker@localhost"]
        assert control.cancel_consumer("remote", destination=hostname, reply=True)

        workload = _workload(queue="remote")
        task_id = workload.ti.external_executor_id
        executor.queue_workload(workload, session=None)
        executor.heartbeat()
        executor.revoke_task(ti=workload.ti)
        assert workload.ti.key not in executor.running
        wait_for(lambda: task_id in (control.inspect(hostname).revoked() or {}).get(
            hostname[0], []), timeout=30, message="the worker knows the revoke")

        assert control.add_consumer("remote", destination=hostname, reply=True)
        result = AsyncResult(task_id, app=executor.celery_app)
        wait_for(lambda: result.state == "REVOKED", timeout=30, message="REVOKED")
        wait_for(lambda: not _messages(sql), timeout=30, message="message acknowledged")
        assert "Discarding revoked task" in worker.log()
        assert "Executing Airflow workload" not in worker.log()
    finally:
        stop_celery_worker(worker)
        shutil.rmtree(run_dir, ignore_errors=True)



def test_a_restarted_scheduler_adopts_its_tasks_from_the_edge_backend(executor, edge_env):
    """Adoption reads the results a previous scheduler's tasks left in the edge API."""
    from airflow.utils.state import TaskInstanceState

    from edge_kombu.airflow import EdgeExecutor
    from edge_kombu.transport.backend import EdgeBackend

    done, running = _workload(), _workload()
    for workload in (done, running):
        executor.queue_workload(workload, session=None)
    executor.heartbeat()
    executor.celery_app.backend.store_result(done.ti.external_executor_id, None, "SUCCESS")

    restarted = EdgeExecutor()
    assert restarted.try_adopt_task_instances([done.ti, running.ti]) == []
    assert restarted.event_buffer[done.ti.key][0] == TaskInstanceState.SUCCESS
    assert set(restarted.workloads) == {running.ti.key}
    assert isinstance(restarted.workloads[running.ti.key].backend, EdgeBackend)
    restarted.end()
