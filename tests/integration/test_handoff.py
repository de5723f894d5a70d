"""Direct hand-off with real processes: a task published while a worker's consume waits is
leased to it by the publish (``edge_kombu_messages_handed_off_total``), then acked, or
redelivered when the worker dies, as any claimed task."""

from __future__ import annotations

import signal

import pytest
from celery import Celery
from sqlalchemy import select

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
