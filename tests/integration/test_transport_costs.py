"""What the transport saves the server: transient messages nobody is bound to are not sent
again for a while, and an expired idle session is replaced instead of failing."""

from __future__ import annotations

from kombu import Connection, Exchange, Queue
from sqlalchemy import select

from bench.env import CountingServer
from edge_kombu.server import models
from tests.helpers import drain_until, wait_for

FAST_LEASES = {"EDGE_KOMBU_LEASE_TIMEOUT": "3", "EDGE_KOMBU_MAX_WAIT": "1",
               "EDGE_KOMBU_REAP_INTERVAL": "0.2"}


def _publishes(server: CountingServer) -> int:
    return server.stats().get("/api/v1/publish", {}).get("requests", 0)


def test_transient_messages_bound_to_nothing_are_sent_once(db_url, token, tmp_path):
    server = CountingServer(db_url, tmp_path).start()
    try:
        with Connection(server.broker_url(token)) as conn, conn.Producer() as producer:
            events = Exchange("events", "topic", durable=False, delivery_mode="transient")
            control = Exchange("control", "fanout", durable=False, delivery_mode="transient")
            for _ in range(5):  # as Celery's worker-heartbeat events: nobody listens
                producer.publish({"beat": 1}, exchange=events, routing_key="worker.heartbeat",
                                 declare=[events])
            assert _publishes(server) == 1
            for _ in range(3):  # persistent messages are always sent
                producer.publish({"n": 1}, exchange=events, routing_key="worker.heartbeat",
                                 delivery_mode="persistent")
            for _ in range(3):  # broadcasts too: a worker may bind its queue at any time
                producer.publish({"n": 1}, exchange=control, routing_key="", declare=[control])
            assert _publishes(server) == 7
            # Once something is bound, transient messages that reach it go out every time.
            queue = Queue("monitor", events, "worker.#", durable=False)
            queue(conn.default_channel).declare()
            other_key = "worker.online"
            for _ in range(3):
                producer.publish({"n": 1}, exchange=events, routing_key=other_key)
            assert _publishes(server) == 10
    finally:
        server.stop()


def test_an_expired_idle_session_is_replaced(api_factory, token, sql):
    api = api_factory(env=FAST_LEASES)
    queue = Queue("renewed")
    received = []
    with Connection(api.url.replace("http://", f"edge+http://:{token}@")) as conn:
        with conn.Consumer(queue, callbacks=[lambda body, msg: (received.append(body),
                                                                msg.ack())]):
            conn.Producer().publish({"n": 1}, routing_key="renewed", declare=[queue])
            drain_until(conn, lambda: len(received) == 1)
        first = conn.transport.session_id

        def closed() -> bool:
            with sql.connect() as db:
                return db.execute(select(models.session.c.closed_at).where(
                    models.session.c.id == first)).scalar() is not None

        wait_for(closed, timeout=30, message="the idle session expired on the server")
        with conn.Consumer(queue, callbacks=[lambda body, msg: (received.append(body),
                                                                msg.ack())]):
            conn.Producer().publish({"n": 2}, routing_key="renewed")
            drain_until(conn, lambda: len(received) == 2)
        assert received == [{"n": 1}, {"n": 2}]
        assert conn.transport.session_id != first
