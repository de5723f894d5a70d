"""Direct hand-off with real processes: a task published while a worker's consume waits is
leased to it by the publish (``edge_kombu_messages_handed_off_total``), then acked, or
redelivered when the worker dies, as any claimed task."""

from __future__ import annotations

import http.client
import json
import os
import signal
from select import select as readable

import pytest
from celery import Celery
from sqlalchemy import select

from edge_kombu.protocol import API_PATH, HEADER_PROTOCOL, PROTOCOL_VERSION
from edge_kombu.server import models
from tests.helpers import messages_left, wait_for
from tests.server.test_metrics import scrape, value

pytestmark = pytest.mark.timeout(240)

HANDED = "edge_kombu_messages_handed_off_total"


def handed(api) -> float:
    return value(scrape(api, auth=None), HANDED)


def run_until_handed(api, client, count: int = 1, tries: int = 30) -> int:
    """Send ``add`` tasks one at a time, each once the worker is idle again, until ``count``
    of them were handed off; returns how many were sent."""
    before = handed(api)
    for sent in range(1, tries + 1):
        assert client.send_task("tests.celery_app.add", args=(sent, 1)).get(timeout=30) == sent + 1
        if handed(api) - before >= count:
            return sent
    raise AssertionError(f"fewer than {count} of {tries} tasks sent to an idle worker were "
                         "handed off")


@pytest.fixture
def client_of():
    apps = []

    def make(url: str) -> Celery:
        app = Celery("edge_test_client", broker=url, backend=url, set_as_current=False)
        app.conf.update(task_acks_late=True, broker_connection_retry=False)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def test_tasks_sent_to_an_idle_worker_are_handed_off_and_acked(api_factory, token,
                                                               worker_factory, client_of, sql):
    api = api_factory(env={"EDGE_KOMBU_METRICS_AUTH": "none"})
    url = api.url.replace("http://", f"edge+http://:{token}@")
    worker_factory(url, concurrency=2)
    sent = run_until_handed(api, client_of(url), count=3)
    wait_for(lambda: messages_left(sql) == 0, timeout=30, message="every task acked")
    samples = scrape(api, auth=None)
    assert value(samples, HANDED) <= value(samples, "edge_kombu_messages_delivered_total")
    assert sent >= 3


def test_a_handed_off_task_of_a_killed_worker_is_redelivered(api_factory, token, worker_factory,
                                                             client_of, tmp_path, sql):
    api = api_factory(env={"EDGE_KOMBU_METRICS_AUTH": "none", "EDGE_KOMBU_LEASE_TIMEOUT": "3",
                           "EDGE_KOMBU_MAX_WAIT": "1.5", "EDGE_KOMBU_REAP_INTERVAL": "0.2"})
    url = api.url.replace("http://", f"edge+http://:{token}@")
    celery_client = client_of(url)
    first = worker_factory(url, name="doomed")
    run_until_handed(api, celery_client)  # the worker waits between tasks from here
    before = handed(api)
    out = tmp_path / "out"
    result = celery_client.send_task("tests.celery_app.sleep_then_stamp",
                                     args=(str(out), "done", 2.0))
    wait_for((tmp_path / "out.started").exists, timeout=30, message="task started on first worker")
    assert handed(api) == before + 1
    with sql.connect() as conn:
        assert conn.execute(select(models.message.c.session)).scalar() is not None  # leased
    first.kill(signal.SIGKILL)
    wait_for(lambda: not first.alive(), timeout=10, message="first worker dead")
    worker_factory(url, name="rescuer")
    assert result.get(timeout=60) == "done"
    assert [line.split()[0] for line in out.read_text().splitlines()] == ["done"]
    assert value(scrape(api, auth=None), "edge_kombu_messages_redelivered_total") >= 1
    wait_for(lambda: messages_left(sql) == 0, timeout=30, message="all messages settled")


def _request(conn: http.client.HTTPConnection, route: str, body: dict, token: str) -> None:
    conn.request("POST", f"{API_PATH}/{route}", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {token}",
                  HEADER_PROTOCOL: PROTOCOL_VERSION})


@pytest.mark.skipif(os.environ.get("EDGE_KOMBU_TEST_DB", "sqlite") != "sqlite",
                    reason="on SQLite only (see the docstring)")
def test_the_handed_consume_is_answered_before_the_publish(api_factory, token):
    """The consume's answer is on its connection by the time the publish's arrives: the
    server switches to it before answering the publisher. (On SQLite only: on PostgreSQL
    and MySQL the consume reads its credential's generation over the network before it
    answers, and the publish answers meanwhile.)"""
    api = api_factory(env={"EDGE_KOMBU_METRICS_AUTH": "none"})
    host, port = "127.0.0.1", api.port
    consumer, publisher = (http.client.HTTPConnection(host, port, timeout=30) for _ in range(2))
    try:
        _request(publisher, "queue/declare", {"name": "q"}, token)
        assert publisher.getresponse().read()
        ask = {"session": "session-1", "queues": [{"name": "q"}], "max_slots": 1,
               "total_slots": 1}
        for attempt in range(20):  # until the consume waited when the publish came
            before = handed(api)
            # A consume that finds nothing: the next one waits without a claim of its own.
            _request(consumer, "consume", dict(ask, wait=0), token)
            assert json.loads(consumer.getresponse().read()) == {"messages": []}
            _request(consumer, "consume", dict(ask, wait=10), token)
            _request(publisher, "publish", {"exchange": "", "routing_key": "q",
                                            "message": {"body": str(attempt), "properties": {}}},
                     token)
            assert json.loads(publisher.getresponse().read()) == {"routed": 1}
            answered_first = bool(readable([consumer.sock], [], [], 0)[0])
            answer = json.loads(consumer.getresponse().read())
            assert len(answer.get("messages", ())) == 1, answer
            if handed(api) > before:
                assert answered_first
                return
        raise AssertionError("no publish found the consume waiting")
    finally:
        consumer.close()
        publisher.close()
