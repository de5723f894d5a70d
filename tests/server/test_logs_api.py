"""``logs/push`` and ``logs/read`` over HTTP, against a real ``edge-kombu api`` process."""

from __future__ import annotations

import time

import pytest

from edge_kombu import errors
from edge_kombu.protocol import MAX_ID_LENGTH, MAX_LOG_CHUNK
from edge_kombu.server.logs import TaskInstanceTry, TaskLogs
from edge_kombu.server.sql import SQL
from edge_kombu.transport.client import EdgeClient
from tests.helpers import FakeClock, wait_for
from tests.server.helpers import error_message, post

TI = {"dag_id": "dag", "task_id": "task", "run_id": "manual__1", "map_index": -1,
      "try_number": 1}


@pytest.fixture
def client(api, token):
    client = EdgeClient(api.url, token=token)
    yield client
    client.close()


def test_push_then_read_with_a_retry(client):
    assert client.call("logs/push", {**TI, "offset": 0, "data": "one\n"}) == {"length": 4}
    assert client.call("logs/push", {**TI, "offset": 0, "data": "one\n"}) == {"length": 4}
    ti_id = "0193f7c2-2b7e-7a1c-9a0e-3c4f5a6b7c8d"
    second = {**TI, "offset": 4, "data": "two ✓\n", "ti_id": ti_id}
    assert client.call("logs/push", second) == {"length": 12}
    whole = client.call("logs/read", TI)
    assert whole == {"found": True, "data": "one\ntwo ✓\n", "offset": 0, "next_offset": 12,
                     "length": 12}
    tail = client.call("logs/read", {**TI, "offset": 4, "limit": 4})
    assert (tail["data"], tail["next_offset"]) == ("two ", 8)
    assert client.call("logs/read", {**TI, "run_id": "other"})["found"] is False


def test_whole_numbers_written_as_floats_name_the_same_log(client):
    # JSON Schema counts 0.0 as an integer; the fuzz suite found it crashing the push.
    as_floats = {**TI, "map_index": -1.0, "try_number": 1.0}
    assert client.call("logs/push", {**as_floats, "offset": 0.0, "data": "one\n"}) == {
        "length": 4}
    assert client.call("logs/push", {**TI, "offset": 4, "data": "two\n"}) == {"length": 8}
    assert client.call("logs/read", {**as_floats, "offset": 4.0})["data"] == "two\n"


def test_a_gap_is_a_409_naming_the_offset_to_push_from(client):
    client.call("logs/push", {**TI, "offset": 0, "data": "abc"})
    with pytest.raises(errors.Conflict, match="push from offset 3"):
        client.call("logs/push", {**TI, "offset": 7, "data": "x"})


@pytest.mark.parametrize(("body", "status", "expected"), [
    ({**TI, "offset": 0, "data": "x" * (MAX_LOG_CHUNK + 1)}, 400,
     f"data: at most {MAX_LOG_CHUNK} characters allowed"),
    ({**TI, "offset": -1, "data": "x"}, 400, "offset: must be >= 0"),
    ({**TI, "offset": "0", "data": "x"}, 400, "offset: must be of type integer"),
    ({**TI, "data": "x"}, 400, "missing required field 'offset'"),
    ({"dag_id": "d", "task_id": "t", "run_id": "r", "try_number": 1, "offset": 0, "data": ""},
     400, "missing required field 'map_index'"),
    ({**TI, "dag_id": "d" * (MAX_ID_LENGTH + 1), "offset": 0, "data": "x"}, 400,
     f"dag_id: at most {MAX_ID_LENGTH} characters allowed"),
    ({**TI, "offset": 0, "data": "a\u0000b"}, 400, "NUL characters are not allowed"),
    ({**TI, "offset": 0, "data": "x", "extra": 1}, 400, "unknown field(s) 'extra'"),
])
def test_bad_pushes_get_a_4xx_naming_the_field(api, token, body, status, expected):
    assert expected in error_message(post(api, "logs/push", body, token=token), status)


def test_a_lone_surrogate_is_a_400(api, token):
    raw = ('{"dag_id": "d", "task_id": "t", "run_id": "r", "map_index": -1, "try_number": 1, '
           '"offset": 0, "data": "\\ud800"}')
    response = post(api, "logs/push", token=token, data=raw,
                    headers={"Content-Type": "application/json"})
    assert "lone surrogate" in error_message(response, 400)


def test_a_read_limit_beyond_the_maximum_is_a_400(api, token):
    response = post(api, "logs/read", {**TI, "limit": 10**9}, token=token)
    assert "limit: must be <=" in error_message(response, 400)


def test_the_api_server_purges_logs_past_the_retention(api_factory, sql):
    clock = FakeClock(time.time() - 2 * 86400)  # pushed two days ago
    old = TaskInstanceTry("dag", "task", "old")
    TaskLogs(SQL(sql.engine, clock=clock)).append(old, 0, "old\n")
    TaskLogs(sql).append(TaskInstanceTry("dag", "task", "new"), 0, "new\n")
    api_factory(env={"EDGE_KOMBU_LOG_RETENTION_DAYS": "1"})
    logs = TaskLogs(sql)
    wait_for(lambda: logs.length(old) is None, message="the old log purged by the reaper")
    assert logs.read(TaskInstanceTry("dag", "task", "new")).data == "new\n"
