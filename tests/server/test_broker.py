"""The broker's contract, tested directly (no HTTP) against the database under test.

Routing, queues, claims and leases, sessions, concurrency and the wake-ups each
transaction owes. Run per database with ``EDGE_KOMBU_TEST_DB`` (see ``tests/conftest.py``).
Nothing here sleeps: time-dependent behaviour runs on a :class:`FakeClock` given to the
SQL kernel.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, func, select

from edge_kombu import errors
from edge_kombu.protocol import HEADER_POOL_SLOTS
from edge_kombu.server import models
from edge_kombu.server.broker import Broker
from edge_kombu.server.sql import SQL, Wakeup
from edge_kombu.server.wakeup import LocalWakeup, WaiterRegistry
from tests.server.helpers import (
    PRINCIPAL,
    bodies,
    consume,
    depth,
    drain,
    msg,
    queue_exists,
    redelivered,
    tag_of,
)


@pytest.fixture
def timed(sql, clock) -> Broker:
    """A broker on the same database whose time is ``clock`` and whose leases last 10 s."""
    return Broker(SQL(sql.engine, clock=clock), lease_timeout=10.0)


# -- routing ------------------------------------------------------------------------------


def test_default_exchange_creates_queue_and_delivers(broker):
    assert not queue_exists(broker, "celery")
    assert broker.publish("", "celery", msg("a")) == ["celery"]
    assert depth(broker, "celery") == 1
    [delivery] = consume(broker, "s1", "celery")
    assert delivery.queue == "celery"
    assert delivery.message["body"] == "a"
    info = delivery.message["properties"]["delivery_info"]
    assert info["exchange"] == "" and info["routing_key"] == "celery"
    assert info["redelivered"] is False


def test_default_exchange_without_routing_key_is_unroutable(broker):
    assert broker.publish("", "", msg("a")) == []
    with pytest.raises(errors.Unroutable):
        broker.publish("", "", msg("a"), mandatory=True)


def test_direct_exchange_routes_exact_key_to_every_bound_queue(broker):
    broker.declare_exchange("tasks", "direct")
    for name in ("a", "b", "c"):
        broker.declare_queue(name)
    broker.bind("a", "tasks", "k1")
    broker.bind("b", "tasks", "k1")
    broker.bind("c", "tasks", "k2")

    assert broker.publish("tasks", "k1", msg("one")) == ["a", "b"]
    assert broker.publish("tasks", "k2", msg("two")) == ["c"]
    assert broker.publish("tasks", "k", msg("none")) == []
    assert broker.publish("tasks", "K1", msg("none")) == []
    assert drain(broker, "s1", "a") == ["one"]
    assert drain(broker, "s2", "b") == ["one"]
    assert drain(broker, "s3", "c") == ["two"]


def test_topic_exchange_star_and_hash(broker):
    broker.declare_exchange("celeryev", "topic")
    for name, key in (("all", "#"), ("workers", "worker.*"), ("tasks", "task.#")):
        broker.declare_queue(name)
        broker.bind(name, "celeryev", key)

    assert broker.publish("celeryev", "worker.heartbeat", msg("hb")) == ["all", "workers"]
    assert broker.publish("celeryev", "task.succeeded", msg("ok")) == ["all", "tasks"]
    assert broker.publish("celeryev", "task.x.y", msg("deep")) == ["all", "tasks"]
    assert broker.publish("celeryev", "other", msg("other")) == ["all"]
    assert broker.publish("celeryev", "workerX.online", msg("no")) == ["all"]

    assert drain(broker, "s1", "all") == ["hb", "ok", "deep", "other", "no"]
    assert drain(broker, "s2", "workers") == ["hb"]
    assert drain(broker, "s3", "tasks") == ["ok", "deep"]


def test_topic_pattern_special_characters_are_literal(broker):
    broker.declare_exchange("ev", "topic")
    broker.declare_queue("q")
    broker.bind("q", "ev", "a+b.(c)")
    assert broker.publish("ev", "a+b.(c)", msg("hit")) == ["q"]
    assert broker.publish("ev", "aab.c", msg("miss")) == []


def test_fanout_copies_to_every_bound_queue(broker):
    broker.declare_exchange("bcast", "fanout")
    for i, name in enumerate(("p1", "p2", "p3")):
        broker.declare_queue(name)
        broker.bind(name, "bcast", f"ignored{i}")

    assert broker.publish("bcast", "anything", msg("ping")) == ["p1", "p2", "p3"]
    for i, name in enumerate(("p1", "p2", "p3")):
        assert drain(broker, f"s{i}", name) == ["ping"]


def test_unknown_exchange_raises_not_found(broker):
    broker.declare_queue("q")
    with pytest.raises(errors.NotFound):
        broker.publish("nope", "q", msg("a"))
    with pytest.raises(errors.NotFound):
        broker.bind("q", "nope", "q")
    with pytest.raises(errors.NotFound):
        broker.declare_exchange("nope", "direct", passive=True)
    broker.declare_exchange("ex", "direct")
    with pytest.raises(errors.NotFound):
        broker.bind("missing-queue", "ex", "k")
    assert depth(broker, "q") == 0


def test_exchange_redeclared_with_other_type_conflicts(broker):
    broker.declare_exchange("ex", "direct")
    broker.declare_exchange("ex", "direct")  # same type: idempotent
    with pytest.raises(errors.Conflict):
        broker.declare_exchange("ex", "fanout")


def test_unroutable_message_is_dropped_or_raises_when_mandatory(broker):
    broker.declare_exchange("ex", "direct")
    broker.declare_queue("q")
    broker.bind("q", "ex", "k")
    assert broker.publish("ex", "other", msg("a")) == []
    with pytest.raises(errors.Unroutable):
        broker.publish("ex", "other", msg("b"), mandatory=True)
    assert depth(broker, "q") == 0
    assert broker.publish("ex", "k", msg("c"), mandatory=True) == ["q"]


def test_unbind_stops_delivery(broker):
    broker.declare_exchange("ex", "direct")
    broker.declare_queue("q")
    broker.bind("q", "ex", "k")
    assert broker.publish("ex", "k", msg("a")) == ["q"]
    broker.unbind("q", "ex", "k")
    assert broker.publish("ex", "k", msg("b")) == []
    assert drain(broker, "s1", "q") == ["a"]


def test_binding_twice_is_idempotent(broker):
    broker.declare_exchange("ex", "topic")
    broker.declare_queue("q")
    broker.bind("q", "ex", "a.*")
    broker.bind("q", "ex", "a.*")
    assert broker.publish("ex", "a.b", msg("once")) == ["q"]
    assert drain(broker, "s1", "q") == ["once"]
    broker.unbind("q", "ex", "a.*")
    assert broker.publish("ex", "a.b", msg("gone")) == []


def test_delete_exchange_removes_its_bindings(broker):
    broker.declare_exchange("ex", "direct")
    broker.declare_queue("q")
    broker.bind("q", "ex", "k")
    broker.delete_exchange("ex")
    with pytest.raises(errors.NotFound):
        broker.publish("ex", "k", msg("a"))
    broker.declare_exchange("ex", "direct")
    assert broker.publish("ex", "k", msg("b")) == []
    assert depth(broker, "q") == 0


# -- queues -------------------------------------------------------------------------------


def test_declare_reports_depth_and_consumers(broker):
    info = broker.declare_queue("q")
    assert (info.name, info.messages, info.consumers) == ("q", 0, 0)
    for i in range(3):
        broker.publish("", "q", msg(str(i)))
    consume(broker, "s1", "q")  # leases one: no longer counted
    broker.touch_session("s2", PRINCIPAL, ["q"])
    info = broker.declare_queue("q")
    assert (info.messages, info.consumers) == (2, 2)
    broker.close_session("s1")  # releases its lease, drops its consumer
    info = broker.declare_queue("q", passive=True)
    assert (info.messages, info.consumers) == (3, 1)


def test_expired_session_is_not_a_consumer(timed, clock):
    timed.declare_queue("q")
    timed.touch_session("s1", PRINCIPAL, ["q"])
    assert timed.queue_info("q").consumers == 1
    clock.advance(11)
    assert timed.queue_info("q").consumers == 0


def test_passive_declare_of_missing_queue_raises_not_found(broker):
    with pytest.raises(errors.NotFound):
        broker.declare_queue("missing", passive=True)
    with pytest.raises(errors.NotFound):
        broker.queue_info("missing")
    assert not queue_exists(broker, "missing")  # and it was not created


def test_purge_removes_only_unleased_messages(broker):
    for i in range(3):
        broker.publish("", "q", msg(str(i)))
    [leased] = consume(broker, "s1", "q")
    assert broker.purge_queue("q") == 2
    assert depth(broker, "q") == 0
    assert broker.ack("s1", [tag_of(leased)]) == (1, [])


def test_delete_queue_if_empty(broker):
    broker.publish("", "q", msg("a"))
    broker.delete_queue("q", if_empty=True)
    assert queue_exists(broker, "q")
    assert depth(broker, "q") == 1
    broker.purge_queue("q")
    broker.delete_queue("q", if_empty=True)
    assert not queue_exists(broker, "q")


def test_delete_queue_if_unused(broker):
    broker.declare_queue("q")
    broker.touch_session("s1", PRINCIPAL, ["q"])
    broker.delete_queue("q", if_unused=True)
    assert queue_exists(broker, "q")
    broker.close_session("s1")
    broker.delete_queue("q", if_unused=True)
    assert not queue_exists(broker, "q")


def test_delete_queue_drops_messages_and_bindings(broker):
    broker.declare_exchange("ex", "direct")
    broker.declare_queue("q")
    broker.bind("q", "ex", "k")
    broker.publish("ex", "k", msg("a"))
    broker.publish("ex", "k", msg("b"))
    assert broker.delete_queue("q") == 2
    assert not queue_exists(broker, "q")
    broker.declare_queue("q")
    assert depth(broker, "q") == 0
    assert broker.publish("ex", "k", msg("c")) == []


@pytest.mark.parametrize("value", [0, -1, "1000", True, [5000]])
def test_invalid_x_expires_raises(broker, value):
    with pytest.raises(errors.InvalidRequest, match="x-expires"):
        broker.declare_queue("q", arguments={"x-expires": value})
    assert not queue_exists(broker, "q")


@pytest.mark.parametrize("value", [-1, "1000", True, [1]])
def test_invalid_x_message_ttl_raises(broker, value):
    with pytest.raises(errors.InvalidRequest, match="x-message-ttl"):
        broker.declare_queue("q", arguments={"x-message-ttl": value})
    assert not queue_exists(broker, "q")


def test_valid_queue_arguments_are_accepted(broker):
    info = broker.declare_queue("q", arguments={"x-expires": 60_000, "x-message-ttl": 0})
    assert info.messages == 0


# -- claims and leases --------------------------------------------------------------------


def test_fifo_within_equal_priority(broker):
    for i in range(5):
        broker.publish("", "q", msg(str(i)))
    got = [bodies(consume(broker, "s1", "q")) for _ in range(5)]
    assert got == [["0"], ["1"], ["2"], ["3"], ["4"]]
    assert consume(broker, "s1", "q") == []


def test_higher_priority_first(broker):
    broker.publish("", "q", msg("p0-a"))
    broker.publish("", "q", msg("p5", priority=5))
    broker.publish("", "q", msg("p0-b", priority=0))
    broker.publish("", "q", msg("p9", priority=9))
    broker.publish("", "q", msg("p5-b", priority=5))
    assert bodies(consume(broker, "s1", "q", max_messages=10)) == [
        "p9", "p5", "p5-b", "p0-a", "p0-b"
    ]


def test_whole_airflow_weights_order_the_queue(broker):
    """Airflow's priority_weight, whole: above 255 and below 0 keep their order."""
    for weight in (1, 300, -5, 1000, 2**31 - 1, -(2**31)):
        broker.publish("", "q", msg(f"w{weight}", priority=weight))
    assert bodies(consume(broker, "s1", "q", max_messages=10)) == [
        f"w{w}" for w in (2**31 - 1, 1000, 300, 1, -5, -(2**31))]


def test_invalid_priority_raises(broker):
    for bad in (2**31, -(2**31) - 1, "5", True, 1.5):
        with pytest.raises(errors.InvalidRequest, match="priority"):
            broker.publish("", "q", msg("x", priority=bad))
    assert not queue_exists(broker, "q")


def test_priority_across_queues(broker):
    broker.publish("", "low", msg("low"))
    broker.publish("", "high", msg("high", priority=3))
    assert bodies(consume(broker, "s1", "low", "high")) == ["high"]


def test_max_messages(broker):
    for i in range(5):
        broker.publish("", "q", msg(str(i)))
    assert bodies(consume(broker, "s1", "q", max_messages=3)) == ["0", "1", "2"]
    assert bodies(consume(broker, "s1", "q", max_messages=3)) == ["3", "4"]
    assert consume(broker, "s1", "q", max_messages=3) == []


def test_max_slots_skips_a_message_that_does_not_fit(broker):
    broker.publish("", "q", msg("big", slots=3))
    broker.publish("", "q", msg("one", slots=1))
    broker.publish("", "q", msg("two", slots=2))
    broker.publish("", "q", msg("default"))
    got = consume(broker, "s1", "q", max_slots=2, max_messages=10)
    assert bodies(got) == ["one", "default"]
    assert bodies(consume(broker, "s2", "q", max_slots=2, max_messages=10)) == ["two"]
    # The big one waits for a worker that has room for it.
    assert consume(broker, "s3", "q", max_slots=2, max_messages=10) == []
    assert bodies(consume(broker, "s4", "q", max_slots=5, max_messages=10)) == ["big"]


def test_max_slots_is_a_budget_across_the_claim(broker):
    broker.publish("", "q", msg("a", slots=2))
    broker.publish("", "q", msg("b", slots=2))
    broker.publish("", "q", msg("c", slots=1))
    assert bodies(consume(broker, "s1", "q", max_slots=3, max_messages=3)) == ["a", "c"]
    assert bodies(consume(broker, "s2", "q", max_slots=1, max_messages=3)) == []
    assert bodies(consume(broker, "s2", "q", max_slots=2, max_messages=3)) == ["b"]


def test_no_ack_queues_are_not_limited_by_max_slots(broker):
    broker.publish("", "tasks", msg("task", slots=2))
    broker.publish("", "tasks", msg("small", slots=1))
    broker.publish("", "pidbox", msg("control", slots=5))
    broker.touch_session("s1", PRINCIPAL, ["tasks", "pidbox"])
    got = broker.claim("s1", [("tasks", False), ("pidbox", True)], max_slots=1, max_messages=10)
    assert sorted(bodies(got)) == ["control", "small"]
    # The no_ack message was taken, not leased: it is gone even when the session closes.
    broker.close_session("s1")
    assert depth(broker, "pidbox") == 0
    assert depth(broker, "tasks") == 2


@pytest.mark.parametrize("slots", [0, -2, "2", True, 1.5])
def test_invalid_pool_slots_raise(broker, slots):
    with pytest.raises(errors.InvalidRequest, match=HEADER_POOL_SLOTS):
        broker.publish("", "q", msg("x", slots=slots))
    assert not queue_exists(broker, "q")


def test_leased_message_is_not_claimed_by_another_session(broker):
    broker.publish("", "q", msg("a"))
    assert bodies(consume(broker, "s1", "q")) == ["a"]
    assert consume(broker, "s2", "q") == []
    assert consume(broker, "s1", "q") == []


def test_no_ack_claim_deletes_the_message(broker):
    broker.publish("", "q", msg("a"))
    [delivery] = consume(broker, "s1", "q", no_ack=True)
    assert delivery.message["body"] == "a"
    assert depth(broker, "q") == 0
    assert broker.close_session("s1") == 0
    assert consume(broker, "s2", "q") == []


def test_ack_deletes_and_second_ack_reports_unknown(broker):
    broker.publish("", "q", msg("a"))
    [delivery] = consume(broker, "s1", "q")
    tag = tag_of(delivery)
    assert broker.ack("s1", [tag]) == (1, [])
    assert broker.ack("s1", [tag]) == (0, [tag])
    assert broker.close_session("s1") == 0
    assert consume(broker, "s2", "q") == []


def test_ack_reports_exactly_the_unknown_tags(broker):
    for i in range(3):
        broker.publish("", "q", msg(str(i)))
    deliveries = consume(broker, "s1", "q", max_messages=3)
    tags = [tag_of(d) for d in deliveries]
    broker.ack("s1", [tags[0]])
    assert broker.ack("s1", [tags[0], tags[1], "garbage", "99999.abc"]) == (
        1,
        [tags[0], "garbage", "99999.abc"],
    )
    assert broker.reject("s1", [tags[1], tags[2]], requeue=True) == (1, [tags[1]])


def test_ack_by_another_session_does_not_settle(broker):
    broker.publish("", "q", msg("a"))
    [delivery] = consume(broker, "s1", "q")
    broker.touch_session("s2", PRINCIPAL, ["q"])
    assert broker.ack("s2", [tag_of(delivery)]) == (0, [tag_of(delivery)])
    assert broker.reject("s2", [tag_of(delivery)], requeue=True) == (0, [tag_of(delivery)])
    assert broker.ack("s1", [tag_of(delivery)]) == (1, [])


def test_reject_requeue_makes_message_claimable_again_as_redelivered(broker):
    broker.publish("", "q", msg("a"))
    [first] = consume(broker, "s1", "q")
    assert redelivered(first) is False
    assert broker.reject("s1", [tag_of(first)], requeue=True) == (1, [])
    assert depth(broker, "q") == 1
    [again] = consume(broker, "s2", "q")
    assert again.message["body"] == "a"
    assert redelivered(again) is True
    assert tag_of(again) != tag_of(first)


def test_reject_without_requeue_deletes(broker):
    broker.publish("", "q", msg("a"))
    [delivery] = consume(broker, "s1", "q")
    assert broker.reject("s1", [tag_of(delivery)], requeue=False) == (1, [])
    assert broker.close_session("s1") == 0
    assert consume(broker, "s2", "q") == []


def test_stale_tag_does_not_settle_a_newer_lease(broker):
    broker.publish("", "q", msg("a"))
    [old] = consume(broker, "s1", "q")
    broker.reject("s1", [tag_of(old)], requeue=True)
    [new] = consume(broker, "s1", "q")
    old_tag, new_tag = tag_of(old), tag_of(new)
    assert old_tag.split(".")[0] == new_tag.split(".")[0]  # same message, new lease
    assert broker.ack("s1", [old_tag]) == (0, [old_tag])
    assert broker.reject("s1", [old_tag], requeue=False) == (0, [old_tag])
    assert consume(broker, "s2", "q") == []  # still leased
    assert broker.ack("s1", [new_tag]) == (1, [])


def test_close_session_releases_leases_as_redelivered(broker):
    for i in range(3):
        broker.publish("", "q", msg(str(i)))
    leased = consume(broker, "s1", "q", max_messages=2)
    assert broker.close_session("s1") == 2
    again = consume(broker, "s2", "q", max_messages=10)
    assert bodies(again) == ["0", "1", "2"]
    assert [redelivered(d) for d in again] == [True, True, False]
    assert broker.ack("s1", [tag_of(d) for d in leased])[0] == 0


def test_close_session_deletes_auto_delete_queues_it_consumed(broker):
    broker.declare_queue("reply.s1", auto_delete=True)
    broker.declare_queue("shared", auto_delete=True)
    broker.declare_queue("durable")
    broker.touch_session("s1", PRINCIPAL, ["reply.s1", "shared", "durable"])
    broker.touch_session("s2", PRINCIPAL, ["shared"])
    broker.close_session("s1")
    assert not queue_exists(broker, "reply.s1")
    assert queue_exists(broker, "shared")  # s2 still consumes it
    assert queue_exists(broker, "durable")
    broker.close_session("s2")
    assert not queue_exists(broker, "shared")


def test_touch_session_on_closed_session_raises(broker):
    broker.touch_session("s1", PRINCIPAL, ["q"])
    broker.close_session("s1")
    with pytest.raises(errors.SessionClosed):
        broker.touch_session("s1", PRINCIPAL, ["q"])


def test_claim_on_closed_session_raises_and_leases_nothing(broker):
    broker.publish("", "q", msg("a"))
    broker.touch_session("s1", PRINCIPAL, ["q"])
    broker.close_session("s1")
    with pytest.raises(errors.SessionClosed):
        broker.claim("s1", [("q", False)])
    with pytest.raises(errors.SessionClosed):
        broker.claim("never-opened", [("q", False)])
    assert bodies(consume(broker, "s2", "q")) == ["a"]


# -- concurrency --------------------------------------------------------------------------


def test_concurrent_claims_deliver_every_message_exactly_once(broker):
    total, workers = 200, 8
    for i in range(total):
        broker.publish("", "q", msg(str(i)))
    start = threading.Barrier(workers)

    def work(n: int) -> list[str]:
        session = f"s{n}"
        broker.touch_session(session, PRINCIPAL, ["q"])
        start.wait()
        got = []
        while True:
            batch = broker.claim(session, [("q", False)], max_messages=3)
            if not batch:
                return got
            got.extend(bodies(batch))
            settled, unknown = broker.ack(session, [tag_of(d) for d in batch])
            assert (settled, unknown) == (len(batch), [])

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(work, range(workers)))
    everything = [body for got in results for body in got]
    assert len(everything) == total
    assert sorted(map(int, everything)) == list(range(total))
    assert depth(broker, "q") == 0


def test_concurrent_declares_of_one_queue_all_succeed(broker):
    workers = 8
    broker.declare_queue("celery")
    start = threading.Barrier(workers)

    def work(n: int) -> None:
        start.wait()
        for i in range(10):
            broker.declare_queue("celery")
            broker.declare_queue(f"fresh{i}")
            broker.publish("", f"fresh{i}", msg(f"{n}.{i}"))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(workers)))
    assert broker.queue_info("celery").messages == 0
    assert [depth(broker, f"fresh{i}") for i in range(10)] == [workers] * 10


# -- wake-up hooks ------------------------------------------------------------------------


class RecordingWakeup(Wakeup):
    """Records every signal, and what another connection sees once it was committed."""

    def __init__(self) -> None:
        self.engine = None
        self.in_tx: list[tuple[set[str], set[str]]] = []
        self.calls: list[tuple[set[str], set[str], int]] = []

    def in_transaction(self, conn, queues, sessions, fresh=None) -> None:
        self.in_tx.append((set(queues), set(sessions)))

    def after_commit(self, queues, sessions, fresh=None) -> None:
        with self.engine.connect() as conn:
            ready = conn.execute(
                select(func.count())
                .select_from(models.message)
                .where(models.message.c.session.is_(None))
            ).scalar_one()
        self.calls.append((set(queues), set(sessions), ready))


@pytest.fixture
def recorder(sql) -> tuple[Broker, RecordingWakeup]:
    wakeup = RecordingWakeup()
    wakeup.engine = sql.engine
    return Broker(SQL(sql.engine, wakeup=wakeup)), wakeup


def test_publish_reports_routed_queues_after_commit(recorder):
    broker, wakeup = recorder
    broker.declare_exchange("bcast", "fanout")
    broker.declare_queue("a")
    broker.declare_queue("b")
    broker.bind("a", "bcast")
    broker.bind("b", "bcast")
    assert wakeup.calls == []  # declarations make nothing available
    broker.publish("bcast", "", msg("x"))
    assert wakeup.calls == [({"a", "b"}, set(), 2)]  # both copies visible at the signal
    assert wakeup.in_tx == [({"a", "b"}, set())]


def test_failed_publish_signals_nothing(recorder):
    broker, wakeup = recorder
    broker.declare_exchange("ex", "direct")
    with pytest.raises(errors.Unroutable):
        broker.publish("ex", "k", msg("x"), mandatory=True)
    assert broker.publish("ex", "k", msg("x")) == []
    assert wakeup.calls == [] and wakeup.in_tx == []


def test_ack_reports_the_session(recorder):
    broker, wakeup = recorder
    broker.publish("", "q", msg("x"))
    [delivery] = consume(broker, "s1", "q")
    wakeup.calls.clear()
    broker.ack("s1", [tag_of(delivery)])
    assert wakeup.calls == [(set(), {"s1"}, 0)]


def test_requeue_reports_the_queue(recorder):
    broker, wakeup = recorder
    broker.publish("", "q", msg("x"))
    [delivery] = consume(broker, "s1", "q")
    wakeup.calls.clear()
    broker.reject("s1", [tag_of(delivery)], requeue=True)
    assert wakeup.calls == [({"q"}, {"s1"}, 1)]


def test_close_session_reports_released_queues(recorder):
    broker, wakeup = recorder
    broker.publish("", "q", msg("x"))
    consume(broker, "s1", "q")
    wakeup.calls.clear()
    broker.close_session("s1")
    assert wakeup.calls == [({"q"}, set(), 1)]


# -- resuming a session over a new connection ---------------------------------------------


def test_resume_keeps_what_the_consumer_holds_and_redelivers_what_it_never_got(broker):
    broker.declare_queue("q")
    for body in ("held", "answer lost", "other"):
        broker.publish("", "q", msg(body))
    held, lost = consume(broker, "s1", "q", max_messages=2)
    released, unknown = broker.resume_session("s1", [tag_of(held), "99.gone"])
    assert (released, unknown) == (1, ["99.gone"])
    again = consume(broker, "s2", "q", max_messages=10)
    assert sorted(bodies(again)) == ["answer lost", "other"]
    assert [redelivered(d) for d in again if d.message["body"] == "answer lost"] == [True]
    assert broker.ack("s1", [tag_of(held)]) == (1, []), "the held lease still settles"


def test_resume_of_a_closed_session_says_so(broker):
    broker.declare_queue("q")
    broker.publish("", "q", msg("m"))
    delivery = consume(broker, "s1", "q")[0]
    broker.close_session("s1")
    with pytest.raises(errors.SessionClosed):
        broker.resume_session("s1", [tag_of(delivery)])


def test_resume_of_a_session_the_server_never_saw_releases_nothing(broker):
    assert broker.resume_session("never-opened", ["1.abc"]) == (0, ["1.abc"])


def test_the_opener_of_a_session_is_read_once(sql, broker):
    """Settlements ask who opened the session; the process remembers it."""
    broker.touch_session("s1", "site-a", ["q"])
    reads = []
    listener = lambda *args: reads.append(args[2])  # noqa: E731
    event.listen(sql.engine, "before_cursor_execute", listener)
    try:
        assert broker.session_principal("s1") == "site-a"
        assert Broker(sql).session_principal("s1") == "site-a"  # another process reads it
        assert broker.session_principal("unknown") is None
    finally:
        event.remove(sql.engine, "before_cursor_execute", listener)
    assert sum("edge_kombu_session" in statement for statement in reads) == 2


def test_a_consume_skips_the_claim_while_the_process_knows_its_queues_are_empty(sql, broker):
    """An idle long-poll asks the database once: its next one, with the same queues and
    capacity and no wake-up for them in between, waits without claiming; a publish (heard
    through the registry) makes the next one claim."""
    sql.wakeup = LocalWakeup(broker.waiters)  # as the API wires them
    broker.declare_queue("q")
    claims = []

    def count(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("SELECT") and "ORDER BY" in statement.upper() \
                and "edge_kombu_message" in statement:
            claims.append(statement)

    event.listen(sql.engine, "before_cursor_execute", count)
    try:
        for _ in range(3):
            assert broker.consume("s1", "site-a", [("q", False)], max_slots=2) == []
        assert len(claims) == 1
        assert broker.consume("s1", "site-a", [("q", False)], max_slots=3) == []
        assert len(claims) == 2  # more capacity: claims again
        broker.publish("", "q", {"body": "hi", "properties": {}})
        [delivery] = broker.consume("s1", "site-a", [("q", False)], max_slots=3)
        assert delivery.message["body"] == "hi"
    finally:
        event.remove(sql.engine, "before_cursor_execute", count)


def test_a_consume_with_less_room_than_a_claim_that_found_nothing_does_not_claim(sql, broker):
    """Nothing fit 3 free slots, so nothing fits 2 (a worker just handed a task asks with
    less room): no claim until a wake-up for its queues; more room claims again."""
    sql.wakeup = LocalWakeup(broker.waiters)
    broker.declare_queue("q")
    claims = []

    def count(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("SELECT") \
                and "edge_kombu_message.payload" in statement:  # the claim's candidates
            claims.append(statement)

    event.listen(sql.engine, "before_cursor_execute", count)
    try:
        args = {"total_slots": 3}
        assert broker.consume("s1", "site-a", [("q", False)], max_slots=3, **args) == []
        assert len(claims) == 1
        assert broker.consume("s1", "site-a", [("q", False)], max_slots=2, **args) == []
        assert broker.consume("s1", "site-a", [("q", False)], max_slots=3, **args) == []
        assert len(claims) == 1
        assert broker.consume("s1", "site-a", [("q", False)], max_slots=2, total_slots=4) == []
        assert len(claims) == 2  # another size: another line of messages
        broker.publish("", "q", {"body": "hi", "properties": {}})
        [delivery] = broker.consume("s1", "site-a", [("q", False)], max_slots=2, **args)
        assert delivery.message["body"] == "hi"
    finally:
        event.remove(sql.engine, "before_cursor_execute", count)


def test_a_consume_held_back_by_the_starvation_guard_claims_every_time(sql, clock):
    """The guard's answer changes without a wake-up (the big message leaves): not known."""
    registry = WaiterRegistry()
    line = Broker(SQL(sql.engine, clock=clock, wakeup=LocalWakeup(registry)),
                  starvation_guard=5.0, waiters=registry)
    other = Broker(SQL(sql.engine, clock=clock))  # another API process
    line.publish("", "tasks", {"body": "big", "headers": {HEADER_POOL_SLOTS: 4},
                               "properties": {}})
    line.publish("", "tasks", {"body": "small", "properties": {}})
    clock.advance(10)
    args = dict(max_slots=1, total_slots=4)
    assert line.consume("c1", "w1", [("tasks", False)], **args) == []  # the big one waits
    other.touch_session("c2", "w2", ["tasks"])
    [big] = other.claim("c2", [("tasks", False)], max_slots=4)
    assert big.message["body"] == "big"
    [small] = line.consume("c1", "w1", [("tasks", False)], **args)
    assert small.message["body"] == "small"


def test_a_session_waiting_longer_than_its_lease_is_kept_alive_without_a_consume(sql, clock):
    """An idle session writes its liveness at most every lease / 2 when it consumes; while
    its consume waits, the reaper's job marks it alive (one statement for all such)."""
    registry = WaiterRegistry()
    timed = Broker(SQL(sql.engine, clock=clock, wakeup=LocalWakeup(registry)),
                   lease_timeout=10.0, waiters=registry)
    timed.declare_queue("q")
    timed.consume("s1", "w1", [("q", False)])
    clock.advance(2)
    timed.consume("s1", "w1", [("q", False)])  # within lease / 2: not written
    with registry.waiting(["q"], "s1", None):  # a consume of s1 waits here
        assert timed.keep_waiting_alive() == 0  # written 2 s ago: not due (lease / 4)
        clock.advance(1)
        assert timed.keep_waiting_alive() == 1
        clock.advance(9)  # 12 s after the consume's write, 9 s after the job's
        with timed.sql.transaction() as tx:
            assert timed.expire(tx, clock())["sessions_expired"] == 0
    clock.advance(2)
    with timed.sql.transaction() as tx:
        assert timed.expire(tx, clock())["sessions_expired"] == 1
