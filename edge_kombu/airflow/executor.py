"""EdgeExecutor: Airflow's CeleryExecutor over the edge API.

Each workload is published, in the scheduler process, as the Celery task
``execute_workload`` to the task's queue (``[operators] default_queue`` unless the task
sets one), with

* the ``pool_slots`` header: the task's ``pool_slots``, its weight on the edge worker;
* the message priority: the task's whole ``priority_weight`` (higher first; callbacks
  and connection tests before every task);
* the Celery task id Airflow pre-assigned (``external_executor_id``), so a restarted
  scheduler adopts its tasks;
* a timeout of ``[edge] publish_timeout`` seconds (10 by default) rather than
  ``[celery] operation_timeout`` (1 s, too short for a round trip over a WAN);
* the ``airflow_version`` header: this site's Airflow, which the edge worker compares
  with its own (another major version fails the task, saying so; see
  :mod:`edge_kombu.airflow.worker.refusal`).

Besides tasks (``ExecuteTask``) it takes Airflow 3.3's other executor workloads:
``ExecuteCallback`` (deadline-alert callbacks given as ``SyncCallback``; to ``[operators]
default_queue``, as the CeleryExecutor routes them) and ``TestConnection`` (connection tests
asked for in the UI or REST API when ``[core] test_connection`` is ``Enabled``; to the queue
the request names, else the default queue). Their message carries the workload's own id as
Celery task id, so a publish repeated after a timeout is stored once.

Multi-team (``[core] multi_team``, AIP-67): the executor of team ``T`` publishes to the
team's queues (``T:<queue>``, :mod:`edge_kombu.teams`), which only workers started with
``--team-name T`` consume; its ``[edge]`` settings are the team's where set
(``AIRFLOW__T___EDGE__API_URL``), else the global ones (one edge API serves every team).

Task states are read with one ``mget`` per sync through the edge result backend;
``revoke_task`` broadcasts a Celery revoke to the edge workers. Configuration:
:mod:`edge_kombu.airflow.celery_app`.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow import __version__ as airflow_version
from airflow.exceptions import AirflowConfigException
from airflow.providers.common.compat.sdk import AirflowTaskTimeout, timeout
from celery import _state as _celery_state

from edge_kombu.airflow.celery_app import (
    DEFAULT_PUBLISH_TIMEOUT,
    EdgeConfigError,
    create_celery_app,
    publish_timeout,
)
from edge_kombu.protocol import (
    AIRFLOW_TASK_NAME,
    HEADER_AIRFLOW_VERSION,
    HEADER_POOL_SLOTS,
    MAX_PRIORITY,
    MIN_PRIORITY,
)
from edge_kombu.teams import team_queue

if TYPE_CHECKING:
    from celery import Celery


@contextmanager
def _quiet_default_celery_config() -> Iterator[None]:
    """Silence the CeleryExecutor's advice about its own (Redis) broker, which we do not use."""
    logger = logging.getLogger("airflow.providers.celery.executors.default_celery")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


with _quiet_default_celery_config():
    from airflow.providers.celery.executors.celery_executor import CeleryExecutor
    from airflow.providers.celery.executors.celery_executor_utils import ExceptionWithTraceback

def message_priority(priority_weight: int | None) -> int:
    """Airflow's ``priority_weight`` as a message priority (higher first), whole: Airflow
    keeps weights within 32 bits, as the edge API does."""
    if priority_weight is None:
        return 0
    return max(MIN_PRIORITY, min(int(priority_weight), MAX_PRIORITY - 1))


def publish_options(workload: Any) -> dict[str, Any]:
    """Headers, priority and task id of one workload's message."""
    ti = getattr(workload, "ti", None)
    if ti is None:  # a callback or connection test: weight 1, before every task, its own id
        options = {"headers": {HEADER_POOL_SLOTS: 1, HEADER_AIRFLOW_VERSION: airflow_version},
                   "priority": MAX_PRIORITY}
        key_id = getattr(getattr(workload, "key", None), "id", None)
        return {**options, "task_id": str(key_id)} if key_id else options
    return {
        "headers": {HEADER_POOL_SLOTS: max(1, int(ti.pool_slots or 1)),
                    HEADER_AIRFLOW_VERSION: airflow_version},
        "priority": message_priority(ti.priority_weight),
        "task_id": ti.external_executor_id,
    }


def send_workload(app: Celery, workload_tuple: tuple, *,
                  seconds: float = DEFAULT_PUBLISH_TIMEOUT) -> tuple:
    """Publish one workload within ``seconds``; the CeleryExecutor's ``(key, args, result)``.

    ``result`` is an ``AsyncResult``, or an ``ExceptionWithTraceback`` (a timeout there
    makes the CeleryExecutor publish again on its next heartbeat, under the same task id:
    the edge API stores it once if the first got through, see ``publish_key``).
    """
    key, workload, queue, team_name = workload_tuple
    args = (workload.model_dump_json(),)
    queue = team_queue(team_name, queue or app.conf.task_default_queue)
    try:
        with timeout(seconds=seconds):
            result = app.send_task(AIRFLOW_TASK_NAME, args=args, queue=queue,
                                   **publish_options(workload))
    except (Exception, AirflowTaskTimeout) as exc:
        result = ExceptionWithTraceback(exc, f"Celery Task ID: {key}\n{traceback.format_exc()}")
    return key, args, result


class _TeamOrGlobalConf:
    """A team executor's configuration: the team's value of an option where set, else the
    global one (Airflow's ``ExecutorConf`` alone gives only the team's)."""

    def __init__(self, team_conf: Any) -> None:
        from airflow.configuration import conf

        self.team_conf, self.global_conf = team_conf, conf

    def get(self, section: str, key: str, fallback: Any = None, **kwargs) -> Any:
        value = self.team_conf.get(section, key, fallback=None, **kwargs)
        if value is None or (isinstance(value, str) and not value.strip()):
            return self.global_conf.get(section, key, fallback=fallback, **kwargs)
        return value


class EdgeExecutor(CeleryExecutor):
    """Runs Airflow workloads on Celery workers that reach the edge API over HTTP(S)."""

    # Tasks and callbacks as the CeleryExecutor; connection tests too (the edge worker runs
    # them with the Task SDK's connection-test supervisor; POSIX, as edge workers are).
    supports_connection_test: bool = True

    def __init__(self, *args, **kwargs) -> None:
        with _quiet_default_celery_config():
            super().__init__(*args, **kwargs)
        edge_conf = _TeamOrGlobalConf(self.conf) if self.team_name else self.conf
        try:
            self.celery_app = create_celery_app(edge_conf)
            # Not [celery] operation_timeout (1 s): a publish is an HTTP round trip, maybe
            # over a WAN, and one given up too early is published again.
            self.publish_timeout = publish_timeout(edge_conf)
        except EdgeConfigError as exc:
            raise AirflowConfigException(str(exc)) from None
        self.bulk_state_fetcher.celery_app = self.celery_app

    def _process_workloads(self, workload_items: Sequence[Any]) -> None:
        from airflow.executors.workloads import TestConnection

        tests = [w for w in workload_items if isinstance(w, TestConnection)]
        others = [w for w in workload_items if not isinstance(w, TestConnection)]
        if others:
            super()._process_workloads(others)
        if not tests:
            return
        default_queue = self.conf.get_mandatory_value("operators", "default_queue")
        self._send_workloads([(w.key, w, w.queue or default_queue, self.team_name)
                              for w in tests])
        for workload in tests:
            # Sent (running) or failed (event buffer): no longer queued. A publish that timed
            # out stays queued: the next heartbeat publishes it again, as for tasks.
            if workload.key not in self.workload_publish_retries:
                self.queued_connection_tests.pop(workload.key, None)

    def _send_workloads_to_celery(self, workload_tuples_to_send: Sequence[tuple]) -> list[tuple]:
        # In this process, one request per workload once its queue is declared: publishing
        # is cheap over HTTP, so none of the CeleryExecutor's publisher subprocesses.
        return [send_workload(self.celery_app, item, seconds=self.publish_timeout)
                for item in workload_tuples_to_send]

    def update_task_state(self, key: Any, state: str, info: Any) -> None:
        # Celery's stored result has no "info", so the CeleryExecutor reports every failure
        # without a reason; Airflow keeps a failed callback's reason as its output: read it
        # (one request, only for a failed callback or connection test).
        if state == "FAILURE" and info is None and not hasattr(key, "try_number"):
            result = self.workloads.get(key)
            try:
                info = result.result if result is not None else None
            except Exception as exc:  # noqa: BLE001 - the reason is a courtesy
                info = exc
        super().update_task_state(key, state, info)

    def try_adopt_task_instances(self, tis: Sequence[Any]) -> Sequence[Any]:
        # The CeleryExecutor builds AsyncResults without an app, i.e. on the current app:
        # make that ours (thread-local) so adopted tasks read the edge result backend.
        previous = _celery_state.get_current_app()
        self.celery_app.set_current()
        try:
            return super().try_adopt_task_instances(tis)
        finally:
            _celery_state._set_current_app(previous)

    def end(self, synchronous: bool = False) -> None:
        super().end(synchronous=synchronous)
        self.celery_app.close()

    def get_task_log(self, ti: Any, try_number: int) -> tuple[list[str], list[str]]:
        # A running edge task's log comes from the database the worker pushed it to, never
        # from a log server on the worker (which the api-server may not reach).
        from edge_kombu.airflow.logs import running_task_log

        return running_task_log(ti, try_number)

    @staticmethod
    def get_cli_commands() -> list:
        # Workers are `celery -A edge_kombu worker`, not `airflow celery worker`.
        return []
