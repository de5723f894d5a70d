"""Airflow workloads on edge workers: the ``execute_workload`` task of ``celery -A edge_kombu``.

:func:`register` adds the task to the edge worker's Celery app when Airflow is
installed; importing this module imports no Airflow. The task does what Airflow's
CeleryExecutor worker does: validate the ``ExecuteTask`` workload and run it through
the Task SDK supervisor, which talks to the Execution API (``[core]
execution_api_server_url``) over HTTP(S) with the workload's token. The worker needs
the DAG files and Airflow, never the metadata database.

A message delivered again while its task instance already runs elsewhere is ignored
(no result is stored), as with the CeleryExecutor. The task process finds the edge
worker's Celery node name in ``EDGE_KOMBU_WORKER``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import cache

from celery import Celery, current_task, signals

from edge_kombu.airflow.provider import TASK_NAME

log = logging.getLogger(__name__)

#: The variable that tells a task process which edge worker runs it.
WORKER_ENV = "EDGE_KOMBU_WORKER"

#: Imported once in the worker's main process, so pool processes do not each pay for it.
PRELOAD = (
    "airflow.executors.base_executor",
    "airflow.executors.workloads",
    "airflow.sdk.execution_time.supervisor",
)


def airflow_installed() -> bool:
    return importlib.util.find_spec("airflow") is not None


@cache
def _workload_adapter():
    from airflow.executors.workloads import ExecutorWorkload
    from pydantic import TypeAdapter

    return TypeAdapter(ExecutorWorkload)


def execute_workload(workload_json: str) -> None:
    """Run one Airflow workload (JSON) to completion; its outcome goes to the Execution API."""
    from airflow.configuration import conf
    from airflow.executors.base_executor import BaseExecutor
    from airflow.sdk.exceptions import TaskAlreadyRunningError
    from celery.exceptions import Ignore

    workload = _workload_adapter().validate_json(workload_json)
    os.environ[WORKER_ENV] = current_task.request.hostname or ""
    log.info("executing Airflow workload %s", workload.display_name)
    title = _proctitle()
    try:
        BaseExecutor.run_workload(
            workload,
            subprocess_logs_to_stdout=conf.getboolean(
                "logging", "task_logs_to_stdout", fallback=False
            ),
        )
    except TaskAlreadyRunningError:
        log.info("workload %s already runs elsewhere; ignoring this delivery",
                 workload.display_name)
        raise Ignore() from None
    finally:
        _proctitle(title)  # run_workload titles the pool process after the workload


def _proctitle(title: str | None = None) -> str | None:
    """Set the process title if ``title`` is given; return the current one."""
    try:
        import setproctitle
    except ImportError:
        return None
    if title is not None:
        setproctitle.setproctitle(title)
    return setproctitle.getproctitle()


def _preload(app: Celery):
    def preload(sender=None, **kwargs) -> None:
        if sender is not app:
            return
        try:
            for name in PRELOAD:
                importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a broken Airflow must not stop the worker
            log.warning("cannot import Airflow (%s: %s): Airflow tasks will fail on this "
                        "worker until that is fixed", type(exc).__name__, exc)

    return preload


def register(app: Celery) -> bool:
    """Give ``app`` the ``execute_workload`` task if Airflow is installed; True if it did."""
    if not airflow_installed():
        return False
    app.task(name=TASK_NAME, ignore_result=False)(execute_workload)
    signals.import_modules.connect(_preload(app), weak=False)
    return True
