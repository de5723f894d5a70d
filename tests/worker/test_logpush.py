"""The worker's log pusher against a real ``edge-kombu api``: tailing, outages, final flush."""

from __future__ import annotations

import pytest

from edge_kombu.server.logs import TaskInstanceTry, TaskLogs
from edge_kombu.transport.client import EdgeClient
from edge_kombu.worker.logpush import LogPusher, PushSettings, _whole_characters
from tests.helpers import free_port, wait_for

TASK = {"dag_id": "dag", "task_id": "task", "run_id": "run", "map_index": -1, "try_number": 1}
TI = TaskInstanceTry(**TASK)
FAST = PushSettings(interval=0.05, chunk_size=1024, flush_timeout=10.0)


@pytest.fixture
def logs(sql) -> TaskLogs:
    return TaskLogs(sql)


@pytest.fixture
def connect(token):
    clients: list[EdgeClient] = []

    def make(url: str) -> EdgeClient:
        clients.append(EdgeClient(url, token=token, connect_retries=0))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def _stored(logs: TaskLogs) -> str:
    return logs.read(TI).data


def test_lines_are_pushed_while_written_and_the_rest_at_the_end(api, connect, logs, tmp_path):
    path = tmp_path / "attempt=1.log"
    pusher = LogPusher(connect(api.url), path, TASK, FAST)
    pusher.start()
    with path.open("a", encoding="utf-8") as file:
        file.write('{"event": "first ✓"}\n{"event": "half')
        file.flush()
        wait_for(lambda: _stored(logs) == '{"event": "first ✓"}\n', message="first line")
        file.write(' a line"}\n' + "x" * 3000)  # then a line longer than a chunk
        file.flush()
        wait_for(lambda: len(_stored(logs)) >= 2048, message="full chunks of the long line")
        file.write("\nlast, without newline")
    assert pusher.finish()
    assert _stored(logs) == path.read_text(encoding="utf-8")


def test_a_push_that_failed_is_sent_again_when_the_api_is_back(api_factory, connect, logs,
                                                                 tmp_path, caplog):
    port = free_port()
    path = tmp_path / "attempt=1.log"
    path.write_text("written while the API is down\n", encoding="utf-8")
    pusher = LogPusher(connect(f"http://127.0.0.1:{port}"),
                       path, TASK, PushSettings(interval=0.05, flush_timeout=0.2))
    pusher.start()
    assert not pusher.finish()  # the task may end meanwhile: nothing lost, still trying
    wait_for(lambda: "cannot push the log" in caplog.text, message="a warning")
    api_factory(port=port)
    wait_for(lambda: _stored(logs) == "written while the API is down\n", message="late push")
    pusher.join(10)
    assert not pusher.is_alive()


def test_a_try_resumed_on_another_worker_continues_the_stored_log(api, connect, logs,
                                                                   tmp_path):
    logs.append(TI, 0, "before deferral, pushed from another worker\n")
    path = tmp_path / "attempt=1.log"
    pusher = LogPusher(connect(api.url), path, TASK, FAST)
    path.write_text("after resuming\n", encoding="utf-8")
    pusher.start()
    assert pusher.finish()
    assert _stored(logs) == "before deferral, pushed from another worker\nafter resuming\n"


def test_a_try_resumed_on_the_same_worker_skips_what_it_pushed_before(api, connect, logs,
                                                                      tmp_path):
    path = tmp_path / "attempt=1.log"
    path.write_text("before deferral\n", encoding="utf-8")
    first = LogPusher(connect(api.url), path, TASK, FAST)
    first.start()
    assert first.finish()
    second = LogPusher(connect(api.url), path, TASK, FAST)
    with path.open("a", encoding="utf-8") as file:
        file.write("after resuming\n")
    second.start()
    assert second.finish()
    assert _stored(logs) == "before deferral\nafter resuming\n"


def test_invalid_utf8_and_nul_bytes_become_replacement_characters(api, connect, logs,
                                                                   tmp_path):
    path = tmp_path / "attempt=1.log"
    path.write_bytes(b"bad \xff byte and \x00 nul\n")
    pusher = LogPusher(connect(api.url), path, TASK, FAST)
    pusher.start()
    assert pusher.finish()
    assert _stored(logs) == "bad \ufffd byte and \ufffd nul\n"


@pytest.mark.parametrize(("raw", "cut"), [
    (b"abc", 3), ("ab€".encode(), 5), ("ab€".encode()[:4], 2), ("ab€".encode()[:3], 2),
    ("a😀".encode()[:4], 1), ("a😀".encode(), 5), (b"", 0),
])
def test_chunks_end_on_whole_characters(raw, cut):
    assert _whole_characters(raw) == cut
