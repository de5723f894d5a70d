"""Task logs of edge workers in Airflow's UI and REST API, read from the database.

Edge workers push each task's log to the edge API while the task runs
(:mod:`edge_kombu.worker.logpush`), which keeps it in the edge tables. Airflow reads it
back through its remote log reader (``REMOTE_TASK_LOG``), which
:mod:`edge_kombu.airflow.logging_config` provides: with

.. code-block:: ini

    [logging]
    logging_config_class = edge_kombu.airflow.logging_config.LOGGING_CONFIG

every api-server reads the logs of edge tasks, running or finished, from the database:
no shared log volume, no log server on the workers (port 8793), any number of
api-servers. The database is the edge API's: Airflow's metadata database when the API
is mounted in the api-server (``[edge] api_enabled``), else ``EDGE_KOMBU_DB_URL``.

Without that setting, the :class:`~edge_kombu.airflow.EdgeExecutor` still shows the log
of a *running* edge task (``get_task_log``); finished ones then need it.

Log lines are the Task SDK's JSON lines, as the supervisor wrote them on the worker, so
the UI renders them as any other task log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

log = logging.getLogger(__name__)

#: Bytes read from the database per query while streaming a log.
READ_SIZE = 1024 * 1024

_lock = threading.Lock()
_logs = None


def task_logs():
    """The :class:`~edge_kombu.server.logs.TaskLogs` of this process (one engine)."""
    global _logs
    with _lock:
        if _logs is None:
            from edge_kombu.server.db import resolve_db_url
            from edge_kombu.server.logs import TaskLogs
            from edge_kombu.server.sql import SQL

            _logs = TaskLogs(SQL.from_url(resolve_db_url(), pool_size=4))
        return _logs


def _ti_try(ti, try_number: int | None = None):
    from edge_kombu.server.logs import TaskInstanceTry

    map_index = ti.map_index if ti.map_index is not None else -1
    number = ti.try_number if try_number is None else try_number
    return TaskInstanceTry(ti.dag_id, ti.task_id, ti.run_id, map_index, number)


def _lines(ti_try) -> Iterator[str]:
    """The log's lines, read in ranges (a long log is never held whole)."""
    logs, offset, rest = task_logs(), 0, ""
    while True:
        got = logs.read(ti_try, offset, READ_SIZE)
        if not got.data:
            break
        *lines, rest = (rest + got.data).split("\n")
        yield from lines
        offset = got.next_offset
    if rest:
        yield rest


def _source(ti_try) -> str:
    return (f"edge worker log of try {ti_try.try_number}, pushed while it ran, read from "
            "the edge database")


class EdgeRemoteLogIO:
    """Airflow's ``RemoteLogIO`` reading the task logs edge workers pushed."""

    processors = ()

    @classmethod
    def from_config(cls) -> EdgeRemoteLogIO:
        return cls()

    def upload(self, path, ti=None) -> None:
        """Nothing to do: the edge worker pushed the log while the task ran."""

    def stream(self, relative_path: str, ti) -> tuple[list[str], list]:
        ti_try = _ti_try(ti)
        if not task_logs().length(ti_try):
            return [], []
        return [_source(ti_try)], [_lines(ti_try)]

    def read(self, relative_path: str, ti) -> tuple[list[str], list[str] | None]:
        sources, streams = self.stream(relative_path, ti)
        return sources, ["\n".join(stream) for stream in streams] or None


def edge_remote_logging_active() -> bool:
    try:
        from airflow.logging_config import get_remote_task_log

        return isinstance(get_remote_task_log(), EdgeRemoteLogIO)
    except Exception:  # noqa: BLE001 - Airflow's own fallback applies
        return False


def running_task_log(ti, try_number: int) -> tuple[list[str], list[str]]:
    """The EdgeExecutor's ``get_task_log``: a running edge task's log from the database.

    Answering with a source also keeps Airflow from asking the worker's log server.
    When :class:`EdgeRemoteLogIO` is Airflow's log reader the lines come from there, so
    only the source is given.
    """
    ti_try = _ti_try(ti, try_number)
    try:
        if edge_remote_logging_active():
            return [_source(ti_try)], []
        if not task_logs().length(ti_try):
            return [], []
        return [_source(ti_try)], ["\n".join(_lines(ti_try))]
    except Exception as exc:  # noqa: BLE001 - e.g. no edge tables here: Airflow falls back
        log.warning("cannot read the edge log of %s: %s", ti_try, exc)
        return [], []
