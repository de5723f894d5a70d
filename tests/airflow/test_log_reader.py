"""The Airflow-side readers of pushed task logs, on the database under test.

``EdgeRemoteLogIO`` (Airflow's ``REMOTE_TASK_LOG``) and the EdgeExecutor's
``get_task_log`` read what :class:`~edge_kombu.server.logs.TaskLogs` stored; the end to
end test (``test_task_logs.py``) shows them in real api-servers.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edge_kombu.server.logs import TaskInstanceTry, TaskLogs

LINES = ['{"timestamp": "2026-11-25T07:00:00Z", "level": "info", "event": "first ✓"}',
         '{"timestamp": "2026-11-25T07:00:01Z", "level": "info", "event": "second"}']


@pytest.fixture
def readers(airflow_in_process, db_url, monkeypatch):
    """``edge_kombu.airflow.logs`` reading the database under test."""
    from edge_kombu.airflow import logs as airflow_logs

    monkeypatch.setenv("EDGE_KOMBU_DB_URL", db_url)
    monkeypatch.setattr(airflow_logs, "_logs", None)  # this process's engine, on db_url
    yield airflow_logs
    if airflow_logs._logs is not None:
        airflow_logs._logs.sql.dispose()


def ti(try_number: int = 2, map_index: int | None = -1):
    return SimpleNamespace(dag_id="dag", task_id="task", run_id="run", map_index=map_index,
                           try_number=try_number)


def test_remote_log_io_streams_the_pushed_lines(readers, sql, monkeypatch):
    logs = TaskLogs(sql)
    monkeypatch.setattr(readers, "READ_SIZE", 16)  # many ranges, cut inside lines
    io = readers.EdgeRemoteLogIO.from_config()
    assert io.stream("dag_id=dag/attempt=2.log", ti()) == ([], [])
    text = "\n".join(LINES) + "\n"
    logs.append(TaskInstanceTry("dag", "task", "run", -1, 2), 0, text[:50])
    logs.append(TaskInstanceTry("dag", "task", "run", -1, 2), len(text[:50].encode()),
                text[50:])
    sources, streams = io.stream("dag_id=dag/attempt=2.log", ti())
    assert sources == ["edge worker log of try 2, pushed while it ran, read from the edge "
                       "database"]
    assert [list(stream) for stream in streams] == [LINES]
    assert io.read("ignored", ti()) == (sources, ["\n".join(LINES)])
    io.upload("any/path.log", ti())  # nothing to do on the api-server: it was pushed already


def test_executor_shows_a_running_try_from_the_database(readers, sql):
    logs = TaskLogs(sql)
    assert readers.running_task_log(ti(), 1) == ([], [])  # nothing pushed: Airflow's way
    logs.append(TaskInstanceTry("dag", "task", "run", -1, 1), 0, LINES[0] + "\n")
    sources, lines = readers.running_task_log(ti(try_number=3, map_index=None), 1)
    assert "try 1" in sources[0]
    assert lines == [LINES[0]]


def test_executor_falls_back_when_the_edge_tables_are_missing(readers, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_KOMBU_DB_URL", f"sqlite:///{tmp_path / 'empty.db'}")
    assert readers.running_task_log(ti(), 1) == ([], [])
