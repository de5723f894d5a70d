import time

import pytest

from tests.helpers import drain_until


def test_broker_transport_setting_without_edge_scheme(api, token):
    """``broker_transport`` selects the transport for a plain http:// URL (no import needed)."""
    from kombu import Connection, Exchange, Queue

    url = api.url.replace("http://", f"http://:{token}@")
    with Connection(url, transport="edge_kombu.transport.kombu:Transport") as conn:
        queue = Queue("plain", Exchange("plain", "direct"), "plain")
        with conn.Producer() as producer:
            producer.publish({"hello": "world"}, exchange=queue.exchange, routing_key="plain",
                             declare=[queue])
        received = []
        with conn.Consumer(queue, callbacks=[lambda body, msg: (received.append(body), msg.ack())]):
            drain_until(conn, lambda: received)
        assert received == [{"hello": "world"}]
        assert token not in conn.as_uri()


def _conn(api, token):
    from kombu import Connection

    return Connection(api.url.replace("http://", f"edge+http://:{token}@"))


def test_fanout_and_topic_routing_between_connections(api, token):
    from kombu import Exchange, Queue

    fan = Exchange("broadcast", "fanout", auto_delete=True)
    topic = Exchange("logs", "topic")
    got: dict[str, list] = {"a": [], "b": [], "errors": []}
    with _conn(api, token) as consumer_conn, _conn(api, token) as producer_conn:
        queues = [
            Queue("fan-a", fan), Queue("fan-b", fan),
            Queue("errors", topic, routing_key="*.error"),
        ]

        def on(name):
            return lambda body, msg: (got[name].append(body), msg.ack())

        with consumer_conn.Consumer(queues[0], callbacks=[on("a")]), \
                consumer_conn.Consumer(queues[1], callbacks=[on("b")]), \
                consumer_conn.Consumer(queues[2], callbacks=[on("errors")]):
            with producer_conn.Producer() as producer:
                producer.publish("all", exchange=fan, routing_key="")
                producer.publish("db failed", exchange=topic, routing_key="db.error")
                producer.publish("db ok", exchange=topic, routing_key="db.info")
            drain_until(consumer_conn, lambda: sum(map(len, got.values())) >= 3)
    assert got == {"a": ["all"], "b": ["all"], "errors": ["db failed"]}


def test_requeue_redelivers_and_slots_bound_prefetch(api, token):
    from kombu import Queue

    queue = Queue("weighted")
    with _conn(api, token) as conn:
        with conn.Producer() as producer:
            producer.publish("big", routing_key="weighted", declare=[queue],
                             headers={"pool_slots": 3})
            producer.publish("small", routing_key="weighted", headers={"pool_slots": 1})
        seen = []
        with conn.Consumer(queue, callbacks=[lambda body, msg: seen.append((body, msg))]) as c:
            c.qos(prefetch_count=2)  # two free slots: the 3-slot message does not fit
            drain_until(conn, lambda: seen)
            assert [body for body, _ in seen] == ["small"]
            body, msg = seen.pop()
            assert msg.delivery_info.get("redelivered") is False
            msg.requeue()
            drain_until(conn, lambda: seen)
            assert seen[0][0] == "small" and seen[0][1].delivery_info["redelivered"] is True
            seen[0][1].ack()
        info = conn.default_channel.queue_declare("weighted", passive=True)
        assert info.message_count == 1  # the 3-slot message waits for a bigger consumer


def test_drain_events_waits_for_its_whole_timeout(api, token):
    """kombu's callers rely on it: remote-control replies are collected until the first
    ``socket.timeout``, and a worker at a remote site may answer after seconds."""
    import threading

    from kombu import Queue

    queue = Queue("late")
    received = []
    with _conn(api, token) as conn, _conn(api, token) as producer_conn:
        with conn.Consumer(queue, callbacks=[lambda body, msg: (received.append(body),
                                                                msg.ack())]):
            producer_conn.Producer().publish({"n": 0}, routing_key="late", declare=[queue])
            drain_until(conn, lambda: received)
            late = threading.Timer(0.5, lambda: producer_conn.Producer().publish(
                {"n": 1}, routing_key="late"))
            late.start()
            started = time.monotonic()
            conn.drain_events(timeout=10)  # one call: no TimeoutError at 0.1 s
            waited = time.monotonic() - started
            late.join()
        assert received == [{"n": 0}, {"n": 1}]
        assert waited >= 0.4, waited
        with pytest.raises(TimeoutError):
            conn.drain_events(timeout=0.3)
