"""A publish repeated by its sender is stored once, on every database: the same Celery
task (id, retries, ETA) sent again, or a client's resend under its per-publish id, within
the dedupe window. A ``retry()`` is a new message."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from edge_kombu.server import models as m
from edge_kombu.server.broker import Broker
from edge_kombu.server.housekeeping import Housekeeping
from edge_kombu.server.jobs import JobHistory
from edge_kombu.server.results import Results
from edge_kombu.server.sql import SQL
from tests.server.test_jobs import task_message

WINDOW = 60.0


@pytest.fixture
def timed(sql, clock) -> Broker:
    """A broker on the test database whose time is ``clock``, with a 60 s dedupe window."""
    kernel = SQL(sql.engine, clock=clock)
    return Broker(kernel, lease_timeout=10.0, history=JobHistory(kernel), dedup_window=WINDOW)


def depth(broker: Broker, queue: str) -> int:
    with broker.sql.connect() as conn:
        return conn.execute(select(func.count()).select_from(m.message)
                            .where(m.message.c.queue == queue)).scalar_one()


def keys(broker: Broker) -> int:
    with broker.sql.connect() as conn:
        return conn.execute(select(func.count()).select_from(m.publish_key)).scalar_one()


def retried(message: dict, retries: int, eta: str | None = None) -> dict:
    message["headers"].update(retries=retries, eta=eta)
    return message


def test_the_same_task_sent_twice_is_stored_once(timed):
    assert timed.publish_once("", "q", task_message("t-1")) == (["q"], False)
    assert timed.publish_once("", "q", task_message("t-1")) == (["q"], True)
    assert depth(timed, "q") == 1


def test_a_retry_is_a_new_message(timed):
    timed.publish("", "q", retried(task_message("t-1"), 0))
    assert timed.publish_once("", "q", retried(task_message("t-1"), 1)) == (["q"], False)
    # ...and the retry sent again by its caller is one message.
    assert timed.publish_once("", "q", retried(task_message("t-1"), 1)) == (["q"], True)
    assert depth(timed, "q") == 2


def test_another_eta_is_another_message(timed):
    timed.publish("", "q", retried(task_message("t-1"), 1, "2026-12-07T10:00:00+00:00"))
    timed.publish("", "q", retried(task_message("t-1"), 1, "2026-12-07T10:05:00+00:00"))
    assert depth(timed, "q") == 2


def test_a_client_resend_is_stored_once(timed):
    event = {"body": "x", "headers": {}, "properties": {"delivery_mode": 2}}
    first = timed.publish_once("", "q", dict(event), publish_id="p-0000001", principal="w1")
    again = timed.publish_once("", "q", dict(event), publish_id="p-0000001", principal="w1")
    other = timed.publish_once("", "q", dict(event), publish_id="p-0000002", principal="w1")
    assert (first, again, other) == ((["q"], False), (["q"], True), (["q"], False))
    # An id is the sender's own: another credential's publish is not taken for its repeat.
    assert timed.publish_once("", "q", dict(event), publish_id="p-0000001",
                              principal="w2") == (["q"], False)
    assert depth(timed, "q") == 3


def test_messages_without_a_key_are_never_taken_for_repeats(timed):
    plain = {"body": "x", "headers": {}, "properties": {"delivery_mode": 2}}
    transient = {"body": "x", "headers": {}, "properties": {"delivery_mode": 1}}
    for _ in range(2):
        timed.publish("", "q", dict(plain))  # no per-publish id (an older client)
        timed.publish("", "q", dict(transient), publish_id="p-0000001")  # events, broadcasts
    assert depth(timed, "q") == 4
    assert keys(timed) == 0


def test_the_window_ends(timed, clock):
    timed.publish("", "q", task_message("t-1"))
    clock.advance(WINDOW - 1)
    assert timed.publish_once("", "q", task_message("t-1"))[1] is True
    clock.advance(2)
    # Older than the window, not yet purged: a new message, and the window starts again.
    assert timed.publish_once("", "q", task_message("t-1"))[1] is False
    assert timed.publish_once("", "q", task_message("t-1"))[1] is True
    assert depth(timed, "q") == 2


def test_a_fanout_repeat_answers_the_same_count_and_stores_nothing(timed):
    timed.declare_exchange("bcast", "fanout")
    for name in ("a", "b", "c"):
        timed.declare_queue(name)
        timed.bind(name, "bcast")
    assert timed.publish_once("bcast", "", task_message("t-1")) == (["a", "b", "c"], False)
    assert timed.publish_once("bcast", "", task_message("t-1")) == (["a", "b", "c"], True)
    assert [depth(timed, q) for q in ("a", "b", "c")] == [1, 1, 1]
    assert keys(timed) == 1  # one key per publish, not per queue


def test_a_refused_publish_leaves_no_key(timed):
    def refuse(exchange, routing_key, queues):
        raise PermissionError("not in scope")

    with pytest.raises(PermissionError):
        timed.publish("", "q", task_message("t-1"), check=refuse)
    assert keys(timed) == 0 and depth(timed, "q") == 0
    assert timed.publish_once("", "q", task_message("t-1")) == (["q"], False)


def test_a_repeat_does_not_restart_the_job(timed):
    timed.publish("", "q", task_message("t-1"))
    timed.touch_session("s-1", "w", ["q"])
    timed.claim("s-1", [("q", False)])
    timed.publish("", "q", task_message("t-1"))
    [job] = timed.history.page()["jobs"]
    assert job["state"] == "received"


def test_housekeeping_purges_keys_after_the_window(timed, clock):
    reap = Housekeeping(timed.sql, broker=timed, results=Results(timed.sql)).expire
    timed.publish("", "q", task_message("t-1"))
    clock.advance(WINDOW / 2)
    timed.publish("", "q", task_message("t-2"))
    clock.advance(WINDOW / 2 + 1)
    assert reap()["publish_keys_expired"] == 1
    assert keys(timed) == 1
    clock.advance(WINDOW / 2)
    assert reap()["publish_keys_expired"] == 1
    assert keys(timed) == 0


def test_a_zero_window_turns_it_off(sql):
    broker = Broker(sql, dedup_window=0)
    broker.publish("", "q", task_message("t-1"))
    broker.publish("", "q", task_message("t-1"))
    assert depth(broker, "q") == 2 and keys(broker) == 0


def test_repeats_racing_each_other_store_one_message(sql):
    """A resend that arrives while the first is still being stored (the client gave up
    waiting): the repeats wait for the first and store nothing, without a deadlock."""
    import threading

    broker = Broker(sql, dedup_window=WINDOW)
    start = threading.Barrier(6)
    answers, failures = [], []

    def send() -> None:
        start.wait(timeout=10)
        try:
            answers.append(broker.publish_once("", "q", task_message("t-race")))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(repr(exc))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures
    assert sorted(repeated for _, repeated in answers) == [False] + [True] * 5
    assert depth(broker, "q") == 1
