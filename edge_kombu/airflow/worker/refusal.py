"""Workloads an edge worker cannot run, failed loudly (worker side, no Airflow import).

An edge worker without Airflow, or with another major version of Airflow than the
central site's (the EdgeExecutor puts it in the ``airflow_version`` header), cannot run
a workload. Rather than an "unregistered task" that Airflow would only notice when the
task's queued timeout ends, the task fails at once with a message saying what is wrong
and what to install: in the worker's log, in the Celery result the EdgeExecutor reads
(the scheduler then fails the task instance, or retries it), and as a line of the task
try's log, pushed to the edge API so Airflow's UI shows it. Another minor or patch
version runs, with a warning in both logs.

Missing DAG files are the Task SDK's to report: ``Dag not found during start up`` (or
``Task not found in Dag``) in the task's log, which the worker pushes as any other.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version

from celery import current_task

from edge_kombu.protocol import HEADER_AIRFLOW_VERSION
from edge_kombu.worker.logpush import LogPusher, log_client_for
from edge_kombu.worker.settings import current

log = logging.getLogger(__name__)


class WorkloadRefused(Exception):
    """This edge worker cannot run the workload; the message says why and what to do."""


@cache  # read once: every workload asks
def local_airflow_version() -> str | None:
    """The installed Airflow (``airflow.__version__`` is apache-airflow-core's)."""
    for distribution in ("apache-airflow-core", "apache-airflow"):
        try:
            return version(distribution)
        except PackageNotFoundError:
            continue
    return None


def central_airflow_version() -> str | None:
    """The Airflow version the publishing EdgeExecutor announced, if any."""
    request = current_task.request if current_task else None
    return getattr(request, HEADER_AIRFLOW_VERSION, None) if request else None


def check_versions(central: str | None, local: str | None) -> tuple[str | None, str | None]:
    """``(error, warning)`` for running a workload of Airflow ``central`` on ``local``."""
    if local is None:
        wanted = f"apache-airflow=={central}" if central else "the central site's Airflow"
        return (f"this edge worker cannot run Airflow tasks: apache-airflow is not installed "
                f"here; install {wanted} (pip install 'edge-kombu[airflow]') and the DAG "
                "files, then restart the worker", None)
    if not central or central == local:
        return None, None
    if central.split(".", 1)[0] != local.split(".", 1)[0]:
        return (f"this edge worker runs Airflow {local}, the central site Airflow {central}: "
                f"the major versions must be the same; install apache-airflow=={central} on "
                "this worker", None)
    return None, (f"this edge worker runs Airflow {local}, the central site Airflow "
                  f"{central}; the task runs, but install apache-airflow=={central} here when "
                  "you can")


def task_of(workload: dict) -> dict | None:
    """The task instance try of a workload (its JSON as a dict), as ``logs/push`` names it."""
    ti = workload.get("ti")
    if not isinstance(ti, dict) or not workload.get("log_path"):
        return None
    try:
        return {"dag_id": ti["dag_id"], "task_id": ti["task_id"], "run_id": ti["run_id"],
                "map_index": int(ti.get("map_index", -1)), "try_number": int(ti["try_number"]),
                "ti_id": str(ti["id"])}
    except (KeyError, TypeError, ValueError):
        return None


def log_line(level: str, event: str) -> str:
    """One line as the Task SDK writes its JSON logs, so Airflow's UI renders it."""
    stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return json.dumps({"timestamp": stamp, "level": level, "event": event,
                       "logger": "edge_kombu.worker",
                       "worker": current_task.request.hostname if current_task else None}) + "\n"


def write_task_log(workload: dict, level: str, event: str, client=None) -> None:
    """Append ``event`` to the try's log file on this worker; push it with ``client``."""
    task = task_of(workload)
    if task is None:
        return
    path = current().base_log_folder / workload["log_path"]
    pusher = LogPusher(client, path, task) if client is not None else None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as file:
            file.write(log_line(level, event))
    except OSError as exc:
        log.warning("cannot write the log of %s.%s to %s: %s", task["dag_id"],
                    task["task_id"], path, exc)
        return
    if pusher is not None:
        pusher.start()
        started = time.monotonic()
        if not pusher.finish():
            log.warning("the log line for %s.%s did not reach the edge API in %.0f s",
                        task["dag_id"], task["task_id"], time.monotonic() - started)


def parse(workload_json: str) -> dict:
    try:
        workload = json.loads(workload_json)
    except ValueError:
        return {}
    return workload if isinstance(workload, dict) else {}


def refuse_unrunnable(workload_json: str) -> None:
    """Raise :class:`WorkloadRefused` if this worker cannot run the workload (its task log
    says why, pushed at once); a version warning goes into the task log the task writes."""
    error, warning = check_versions(central_airflow_version(), local_airflow_version())
    if warning is not None:
        log.warning("%s", warning)
        write_task_log(parse(workload_json), "warning", warning)  # pushed with the task log
    if error is None:
        return
    log.error("%s", error)
    write_task_log(parse(workload_json), "error", error, push_client(current_task.app))
    raise WorkloadRefused(error)


@cache  # one client per app, not one per refused workload
def push_client(app):
    """The client for task logs if ``[edge] push_logs`` (default True), else None."""
    if not current().push_logs:
        return None
    return log_client_for(app)
