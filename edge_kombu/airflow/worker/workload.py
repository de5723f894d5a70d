"""Airflow workloads on edge workers: the ``execute_workload`` task of ``celery -A edge_kombu``.

:func:`register` adds the task to the edge worker's Celery app when Airflow is
installed; importing this module imports no Airflow. The task does what Airflow's
CeleryExecutor worker does: validate the ``ExecuteTask`` workload and run it through
the Task SDK supervisor, which talks to the Execution API (``[core]
execution_api_server_url``) over HTTP(S) with the workload's token. The worker needs
the DAG files and Airflow, never the metadata database.

The same task runs Airflow 3.3's other executor workloads, each with its Task SDK
supervisor (``BaseExecutor.run_workload``): ``ExecuteCallback`` (a deadline alert's
``SyncCallback``, imported by path, from the DAG file when defined there) and
``TestConnection`` (a connection test, which reports its own result to the Execution
API). A callback that raises fails the Celery task (its supervisor raises), so Airflow
records the callback as failed.

A message delivered again while its task instance already runs elsewhere is ignored
(no result is stored), as with the CeleryExecutor. The task process finds the edge
worker's Celery node name in ``EDGE_KOMBU_WORKER``.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
from functools import cache
from pathlib import Path

from celery import Celery, current_task, signals

from edge_kombu.airflow.worker.refusal import refuse_unrunnable
from edge_kombu.protocol import AIRFLOW_TASK_NAME
from edge_kombu.worker.logpush import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_INTERVAL,
    LogPusher,
    PushSettings,
    log_client_for,
)

log = logging.getLogger(__name__)

#: The variable that tells a task process which edge worker runs it.
WORKER_ENV = "EDGE_KOMBU_WORKER"

#: Imported once in the worker's main process before it forks its pool. Neither a pool
#: process nor the task process its supervisor forks for each workload imports them again:
#: the supervisor, the task runner, and what the task runner imports to parse a DAG file
#: (the DagBag pulls in the ORM models and serialization, ~150 modules). Without them in
#: the parent, every task process imported them itself: ~0.35 s of CPU per workload,
#: which made 8 concurrent workloads on 2 cores take 3-4 s each.
PRELOAD = (
    "airflow.executors.base_executor",
    "airflow.executors.workloads",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.dag_processing.dagbag",
    "airflow.sdk.definitions.decorators",
)
#: Preloaded too where installed (as Airflow's Celery worker does): what most DAG files
#: import. A missing one is not an error.
PRELOAD_OPTIONAL = (
    "airflow.providers.standard.operators.python",
    "airflow.providers.standard.operators.bash",
    "airflow.providers.standard.decorators.python",
    "jinja2.ext",
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

    refuse_unrunnable(workload_json)
    workload = _workload_adapter().validate_json(workload_json)
    os.environ[WORKER_ENV] = current_task.request.hostname or ""
    _fetch_bundle_from_centre(workload, conf)
    log.info("executing Airflow workload %s", workload.display_name)
    title = _proctitle()
    pusher = _start_log_pusher(workload, conf)
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
        if pusher is not None and not pusher.finish():
            log.warning("the end of the log of %s is not pushed yet; still trying in the "
                        "background", workload.display_name)


#: Where the task process's bundle manager reads ``[dag_processor] dag_bundle_config_list``.
BUNDLE_CONFIG_ENV = "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"
EDGE_BUNDLE_CLASSPATH = "edge_kombu.airflow.worker.dag_bundle.EdgeDagBundle"


def _fetch_bundle_from_centre(workload, conf) -> None:
    """``[edge] fetch_dag_bundles``: the workload's bundle is an EdgeDagBundle of its name.

    The task process (forked by the supervisor from this pool process) builds its bundle
    manager from the environment, which names only this bundle.
    """
    if not conf.getboolean("edge", "fetch_dag_bundles", fallback=False):
        return
    info = getattr(workload, "bundle_info", None)
    if info is None:
        return
    os.environ[BUNDLE_CONFIG_ENV] = json.dumps(
        [{"name": info.name, "classpath": EDGE_BUNDLE_CLASSPATH, "kwargs": {}}])


def push_settings(conf) -> PushSettings:
    """``[edge] push_logs``, ``log_push_interval``, ``push_log_chunk_size`` from Airflow."""
    return PushSettings(
        enabled=conf.getboolean("edge", "push_logs", fallback=True),
        interval=conf.getfloat("edge", "log_push_interval", fallback=DEFAULT_INTERVAL),
        chunk_size=conf.getint("edge", "push_log_chunk_size", fallback=DEFAULT_CHUNK_SIZE),
    )


@cache
def _log_client():
    return log_client_for(current_task.app)


def _start_log_pusher(workload, conf) -> LogPusher | None:
    """Tail the task's log file to the edge API while it runs (``[edge] push_logs``)."""
    ti, log_path = getattr(workload, "ti", None), getattr(workload, "log_path", None)
    if ti is None or not log_path:
        return None
    try:
        settings = push_settings(conf)
        if not settings.enabled:
            return None
        client = _log_client()
    except Exception as exc:  # noqa: BLE001 - the task runs anyway; its log stays local
        log.warning("task logs are not pushed (%s: %s); they stay in [logging] "
                    "base_log_folder on this worker", type(exc).__name__, exc)
        return None
    if client is None:
        return None
    task = {"dag_id": ti.dag_id, "task_id": ti.task_id, "run_id": ti.run_id,
            "map_index": ti.map_index, "try_number": ti.try_number, "ti_id": str(ti.id)}
    path = Path(conf.get("logging", "base_log_folder")).expanduser() / log_path
    pusher = LogPusher(client, path, task, settings)
    pusher.start()
    return pusher


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
            return
        for name in PRELOAD_OPTIONAL:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S112 - optional: the task imports it if it can
                continue
        # What was imported stays for the life of the worker: out of the collector's sight,
        # no collection in a pool or task process walks (and so copies) those pages.
        gc.collect()
        gc.freeze()

    return preload


def register(app: Celery) -> bool:
    """Give ``app`` the ``execute_workload`` task; True if Airflow is installed to run it.

    Without Airflow the task fails every workload with a message that says so, rather than
    leaving Airflow to wait for a task no worker registered.
    """
    if not airflow_installed():
        app.task(name=AIRFLOW_TASK_NAME, ignore_result=False)(refuse_unrunnable)
        return False
    app.task(name=AIRFLOW_TASK_NAME, ignore_result=False)(execute_workload)
    signals.import_modules.connect(_preload(app), weak=False)
    return True
