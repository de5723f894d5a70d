"""Reconnects over the edge transport: the consumer session outlives the connection."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from kombu import Connection, Queue

from edge_kombu import errors
from edge_kombu.server import models
from edge_kombu.transport import probe
from edge_kombu.transport.client import EdgeClient
from tests.helpers import drain_until, free_port, messages_left, wait_for

pytestmark = pytest.mark.timeout(120)


def _connect(api, token) -> Connection:
    return Connection(api.url.replace("http://", f"edge+http://:{token}@"))


def _lose(api, conn: Connection) -> None:
    """The API dies under ``conn``, which is dropped as Celery drops a failed connection."""
    api.kill(signal.SIGKILL)
    api.proc.wait(10)
    conn.collect()


def test_an_ack_made_across_a_restart_settles_its_lease(api, token, sql):
    queue = Queue("carried")
    first, second = [], []
    old = _connect(api, token)
    old.Producer().publish({"n": 1}, routing_key="carried", declare=[queue])
    consumer = old.Consumer(queue, callbacks=[lambda body, msg: first.append(msg)])
    consumer.consume()
    drain_until(old, lambda: first)
    session = old.transport.session
    _lose(api, old)

    first[0].ack()  # the task finished while the API was away: the ack waits
    wait_for(lambda: session.deferred, timeout=30, message="the ack was deferred")
    api.start()

    with _connect(api, token) as new, new.Consumer(
            queue, callbacks=[lambda body, msg: (second.append(body), msg.ack())]):
        new.Producer().publish({"n": 2}, routing_key="carried")
        drain_until(new, lambda: second)
        assert new.transport.session is session, "the new connection carried the session on"
        assert not session.deferred
        wait_for(lambda: messages_left(sql) == 0, timeout=10, message="both messages settled")
    assert second == [{"n": 2}], "the acknowledged message was not delivered again"
    assert "had no effect" not in api.log()


#: Seconds within which a reconnect must be back after the API (the aim is 2 s; measured
#: 1.4 s on an idle machine): room for a loaded CI machine.
BACK_WITHIN = 3.0


@pytest.mark.sqlite_only  # the client's probing: the same on every database
def test_a_reconnect_probes_and_returns_soon_after_the_api(api, token):
    queue = Queue("probed")
    got = []
    old = _connect(api, token)
    consumer = old.Consumer(queue, callbacks=[lambda body, msg: (got.append(body), msg.ack())])
    consumer.consume()
    old.Producer().publish({"n": 1}, routing_key="probed", declare=[queue])
    drain_until(old, lambda: got)
    _lose(api, old)

    connected = {}

    def reconnect():
        conn = _connect(api, token)
        conn.connect()  # probes while the API is away
        connected["at"] = time.monotonic()
        connected["conn"] = conn

    thread = threading.Thread(target=reconnect, daemon=True)
    thread.start()
    thread.join(3)  # the outage: the API stays away for a few probes
    assert thread.is_alive() and not connected, "connected while the API was down"
    api.start()
    healthy_at = time.monotonic()
    thread.join(10)
    assert connected, "the reconnect never finished"
    assert connected["at"] - healthy_at < BACK_WITHIN, connected["at"] - healthy_at
    connected["conn"].release()


def test_rate_limited_tasks_go_back_at_once_when_the_connection_is_lost(
        api, token, worker_factory, celery_client, tmp_path, sql):
    """Celery forgets the tasks its rate limit holds back when the connection fails; they
    are requeued as soon as the API answers again, not when a lease times out."""
    url = api.url.replace("http://", f"edge+http://:{token}@")
    worker = worker_factory(url, name="limited", concurrency=2)
    out = tmp_path / "out"
    for label in ("r0", "r1", "r2"):
        celery_client.send_task("tests.celery_app.rate_limited_stamp", args=(str(out), label))
    wait_for(lambda: out.exists(), timeout=30, message="the first task ran")
    # The first one acknowledged (deleted), the other two delivered and held back.
    leased = models.message.c.session.is_not(None)
    wait_for(lambda: messages_left(sql) == 2 and messages_left(sql, leased) == 2, timeout=30,
             message="two tasks held by the rate limit")
    # Leased on the server is not yet received: the consume's answer may still be on its way.
    wait_for(lambda: worker.log().count("] received") == 3, timeout=30,
             message="the worker received all three tasks")

    api.kill(signal.SIGKILL)
    api.proc.wait(10)
    wait_for(lambda: "requeueing 2 rate-limited task(s)" in worker.log(), timeout=30,
             message="the worker handed the held tasks back")
    api.start()
    redelivered = models.message.c.redelivered.is_(True)
    wait_for(lambda: messages_left(sql, redelivered) == 2, timeout=15,
             message="both held tasks back in their queue (and delivered again)")
    assert out.read_text().count("r") == 1, "no task ran twice"


def test_probing_stops_when_the_worker_stops():
    client = EdgeClient(f"http://127.0.0.1:{free_port()}", token="ekt_unused", connect_retries=0)
    stop_at = time.monotonic() + 0.5
    started = time.monotonic()
    with pytest.raises(errors.EdgeConnectionError):
        probe.hello_when_back(client.call, stopping=lambda: time.monotonic() >= stop_at)
    assert time.monotonic() - started < 3
