"""Faults: a worker killed with unacked work, and the API server restarted under load."""

from __future__ import annotations

import signal

import pytest

from tests.helpers import messages_left, wait_for

pytestmark = pytest.mark.timeout(240)

#: A short lease so a killed worker's messages come back within seconds.
FAST_LEASES = {
    "EDGE_KOMBU_LEASE_TIMEOUT": "3",
    "EDGE_KOMBU_MAX_WAIT": "1",
    "EDGE_KOMBU_REAP_INTERVAL": "0.2",
}


@pytest.fixture
def fast_broker_url(api_factory, token):
    api = api_factory(env=FAST_LEASES)
    return api, api.url.replace("http://", f"edge+http://:{token}@")


def labels(path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines()] if path.exists() else []


def test_killed_worker_task_is_redelivered(fast_broker_url, worker_factory, celery_client, tmp_path,
                                           sql):
    api, url = fast_broker_url
    first = worker_factory(url, name="doomed")
    out = tmp_path / "out"
    result = celery_client.send_task(
        "tests.celery_app.sleep_then_stamp", args=(str(out), "done", 2.0)
    )
    wait_for((tmp_path / "out.started").exists, timeout=30, message="task started on first worker")
    first.kill(signal.SIGKILL)
    wait_for(lambda: not first.alive(), timeout=10, message="first worker dead")
    (tmp_path / "out.started").unlink()

    second = worker_factory(url, name="rescuer")
    assert result.get(timeout=60) == "done"
    assert labels(out) == ["done"], "the task ran to completion exactly once, on the second worker"
    assert "redelivered" in second.log() or result.state == "SUCCESS"
    assert "expired 1 silent consumer session" in api.log()
    wait_for(lambda: messages_left(sql) == 0, timeout=30, message="all messages settled")


def test_api_restart_loses_nothing(api_factory, token, worker_factory, celery_client, tmp_path,
                                   sql):
    api = api_factory(env=FAST_LEASES)
    url = api.url.replace("http://", f"edge+http://:{token}@")
    worker_factory(url, name="steady", concurrency=2)
    out = tmp_path / "out"
    before = [
        celery_client.send_task("tests.celery_app.sleep_then_stamp", args=(str(out), f"a{i}", 0.1))
        for i in range(20)
    ]
    wait_for(lambda: len(labels(out)) >= 3, timeout=30, message="some tasks done before restart")
    api.restart()
    after = [
        celery_client.send_task("tests.celery_app.stamp", args=(str(out), f"b{i}"))
        for i in range(20)
    ]
    for result in before + after:
        result.get(timeout=90)
    done = labels(out)
    expected = {f"a{i}" for i in range(20)} | {f"b{i}" for i in range(20)}
    assert set(done) == expected, f"lost: {sorted(expected - set(done))}"
    # The worker's session outlives its connection: acks made across the restart settle.
    twice = sorted({label for label in done if done.count(label) > 1})
    assert not twice, f"run twice: {twice}"
    # Every message was acknowledged in the end: none stays leased to a live session.
    wait_for(lambda: messages_left(sql) == 0, timeout=30, message="all messages settled")
