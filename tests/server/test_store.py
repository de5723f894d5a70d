"""The store's contract, tested directly (no HTTP) against the database under test.

Run per database with ``EDGE_KOMBU_TEST_DB`` (see ``tests/conftest.py``). Nothing
here sleeps: time-dependent behaviour runs on a :class:`FakeClock` given to the store.
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select

from edge_kombu import errors
from edge_kombu.protocol import HEADER_POOL_SLOTS
from edge_kombu.server import models
from edge_kombu.server.store import Delivery, Store, Wakeup

PRINCIPAL = "test-worker"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def timed(store, clock) -> Store:
    """A store on the same database whose time is ``clock`` and whose leases last 10 s."""
    return Store(store.engine, lease_timeout=10.0, clock=clock)


def msg(body: str, *, priority=None, slots=None, expiration=None) -> dict:
    headers = {} if slots is None else {HEADER_POOL_SLOTS: slots}
    properties: dict = {}
    if priority is not None:
        properties["priority"] = priority
    if expiration is not None:
        properties["expiration"] = expiration
    return {"body": body, "headers": headers, "properties": properties}


def consume(
    store: Store, session: str, *queues: str, no_ack: bool = False, **kwargs
) -> list[Delivery]:
    """What a consume request does: touch the session for ``queues``, then claim."""
    store.touch_session(session, PRINCIPAL, queues)
    return store.claim(session, [(q, no_ack) for q in queues], **kwargs)


def bodies(deliveries: list[Delivery]) -> list[str]:
    return [d.message["body"] for d in deliveries]


def tag_of(delivery: Delivery) -> str:
    return delivery.message["properties"]["delivery_tag"]


def redelivered(delivery: Delivery) -> bool:
    return delivery.message["properties"]["delivery_info"]["redelivered"]


def depth(store: Store, queue: str) -> int:
    return store.queue_info(queue).messages


def queue_exists(store: Store, queue: str) -> bool:
    try:
        store.queue_info(queue)
    except errors.NotFound:
        return False
    return True


def drain(store: Store, session: str, queue: str) -> list[str]:
    return bodies(consume(store, session, queue, max_messages=1000))


# -- routing ------------------------------------------------------------------------------


def test_default_exchange_creates_queue_and_delivers(store):
    assert not queue_exists(store, "celery")
    assert store.publish("", "celery", msg("a")) == ["celery"]
    assert depth(store, "celery") == 1
    [delivery] = consume(store, "s1", "celery")
    assert delivery.queue == "celery"
    assert delivery.message["body"] == "a"
    info = delivery.message["properties"]["delivery_info"]
    assert info["exchange"] == "" and info["routing_key"] == "celery"
    assert info["redelivered"] is False


def test_default_exchange_without_routing_key_is_unroutable(store):
    assert store.publish("", "", msg("a")) == []
    with pytest.raises(errors.Unroutable):
        store.publish("", "", msg("a"), mandatory=True)


def test_direct_exchange_routes_exact_key_to_every_bound_queue(store):
    store.declare_exchange("tasks", "direct")
    for name in ("a", "b", "c"):
        store.declare_queue(name)
    store.bind("a", "tasks", "k1")
    store.bind("b", "tasks", "k1")
    store.bind("c", "tasks", "k2")

    assert store.publish("tasks", "k1", msg("one")) == ["a", "b"]
    assert store.publish("tasks", "k2", msg("two")) == ["c"]
    assert store.publish("tasks", "k", msg("none")) == []
    assert store.publish("tasks", "K1", msg("none")) == []
    assert drain(store, "s1", "a") == ["one"]
    assert drain(store, "s2", "b") == ["one"]
    assert drain(store, "s3", "c") == ["two"]


def test_topic_exchange_star_and_hash(store):
    store.declare_exchange("celeryev", "topic")
    for name, key in (("all", "#"), ("workers", "worker.*"), ("tasks", "task.#")):
        store.declare_queue(name)
        store.bind(name, "celeryev", key)

    assert store.publish("celeryev", "worker.heartbeat", msg("hb")) == ["all", "workers"]
    assert store.publish("celeryev", "task.succeeded", msg("ok")) == ["all", "tasks"]
    assert store.publish("celeryev", "task.x.y", msg("deep")) == ["all", "tasks"]
    assert store.publish("celeryev", "other", msg("other")) == ["all"]
    assert store.publish("celeryev", "workerX.online", msg("no")) == ["all"]

    assert drain(store, "s1", "all") == ["hb", "ok", "deep", "other", "no"]
    assert drain(store, "s2", "workers") == ["hb"]
    assert drain(store, "s3", "tasks") == ["ok", "deep"]


def test_topic_pattern_special_characters_are_literal(store):
    store.declare_exchange("ev", "topic")
    store.declare_queue("q")
    store.bind("q", "ev", "a+b.(c)")
    assert store.publish("ev", "a+b.(c)", msg("hit")) == ["q"]
    assert store.publish("ev", "aab.c", msg("miss")) == []


def test_fanout_copies_to_every_bound_queue(store):
    store.declare_exchange("bcast", "fanout")
    for i, name in enumerate(("p1", "p2", "p3")):
        store.declare_queue(name)
        store.bind(name, "bcast", f"ignored{i}")

    assert store.publish("bcast", "anything", msg("ping")) == ["p1", "p2", "p3"]
    for i, name in enumerate(("p1", "p2", "p3")):
        assert drain(store, f"s{i}", name) == ["ping"]


def test_unknown_exchange_raises_not_found(store):
    store.declare_queue("q")
    with pytest.raises(errors.NotFound):
        store.publish("nope", "q", msg("a"))
    with pytest.raises(errors.NotFound):
        store.bind("q", "nope", "q")
    with pytest.raises(errors.NotFound):
        store.declare_exchange("nope", "direct", passive=True)
    store.declare_exchange("ex", "direct")
    with pytest.raises(errors.NotFound):
        store.bind("missing-queue", "ex", "k")
    assert depth(store, "q") == 0


def test_exchange_redeclared_with_other_type_conflicts(store):
    store.declare_exchange("ex", "direct")
    store.declare_exchange("ex", "direct")  # same type: idempotent
    with pytest.raises(errors.Conflict):
        store.declare_exchange("ex", "fanout")


def test_unroutable_message_is_dropped_or_raises_when_mandatory(store):
    store.declare_exchange("ex", "direct")
    store.declare_queue("q")
    store.bind("q", "ex", "k")
    assert store.publish("ex", "other", msg("a")) == []
    with pytest.raises(errors.Unroutable):
        store.publish("ex", "other", msg("b"), mandatory=True)
    assert depth(store, "q") == 0
    assert store.publish("ex", "k", msg("c"), mandatory=True) == ["q"]


def test_unbind_stops_delivery(store):
    store.declare_exchange("ex", "direct")
    store.declare_queue("q")
    store.bind("q", "ex", "k")
    assert store.publish("ex", "k", msg("a")) == ["q"]
    store.unbind("q", "ex", "k")
    assert store.publish("ex", "k", msg("b")) == []
    assert drain(store, "s1", "q") == ["a"]


def test_binding_twice_is_idempotent(store):
    store.declare_exchange("ex", "topic")
    store.declare_queue("q")
    store.bind("q", "ex", "a.*")
    store.bind("q", "ex", "a.*")
    assert store.publish("ex", "a.b", msg("once")) == ["q"]
    assert drain(store, "s1", "q") == ["once"]
    store.unbind("q", "ex", "a.*")
    assert store.publish("ex", "a.b", msg("gone")) == []


def test_delete_exchange_removes_its_bindings(store):
    store.declare_exchange("ex", "direct")
    store.declare_queue("q")
    store.bind("q", "ex", "k")
    store.delete_exchange("ex")
    with pytest.raises(errors.NotFound):
        store.publish("ex", "k", msg("a"))
    store.declare_exchange("ex", "direct")
    assert store.publish("ex", "k", msg("b")) == []
    assert depth(store, "q") == 0


# -- queues -------------------------------------------------------------------------------


def test_declare_reports_depth_and_consumers(store):
    info = store.declare_queue("q")
    assert (info.name, info.messages, info.consumers) == ("q", 0, 0)
    for i in range(3):
        store.publish("", "q", msg(str(i)))
    consume(store, "s1", "q")  # leases one: no longer counted
    store.touch_session("s2", PRINCIPAL, ["q"])
    info = store.declare_queue("q")
    assert (info.messages, info.consumers) == (2, 2)
    store.close_session("s1")  # releases its lease, drops its consumer
    info = store.declare_queue("q", passive=True)
    assert (info.messages, info.consumers) == (3, 1)


def test_expired_session_is_not_a_consumer(timed, clock):
    timed.declare_queue("q")
    timed.touch_session("s1", PRINCIPAL, ["q"])
    assert timed.queue_info("q").consumers == 1
    clock.advance(11)
    assert timed.queue_info("q").consumers == 0


def test_passive_declare_of_missing_queue_raises_not_found(store):
    with pytest.raises(errors.NotFound):
        store.declare_queue("missing", passive=True)
    with pytest.raises(errors.NotFound):
        store.queue_info("missing")
    assert not queue_exists(store, "missing")  # and it was not created


def test_purge_removes_only_unleased_messages(store):
    for i in range(3):
        store.publish("", "q", msg(str(i)))
    [leased] = consume(store, "s1", "q")
    assert store.purge_queue("q") == 2
    assert depth(store, "q") == 0
    assert store.ack("s1", [tag_of(leased)]) == (1, [])


def test_delete_queue_if_empty(store):
    store.publish("", "q", msg("a"))
    store.delete_queue("q", if_empty=True)
    assert queue_exists(store, "q")
    assert depth(store, "q") == 1
    store.purge_queue("q")
    store.delete_queue("q", if_empty=True)
    assert not queue_exists(store, "q")


def test_delete_queue_if_unused(store):
    store.declare_queue("q")
    store.touch_session("s1", PRINCIPAL, ["q"])
    store.delete_queue("q", if_unused=True)
    assert queue_exists(store, "q")
    store.close_session("s1")
    store.delete_queue("q", if_unused=True)
    assert not queue_exists(store, "q")


def test_delete_queue_drops_messages_and_bindings(store):
    store.declare_exchange("ex", "direct")
    store.declare_queue("q")
    store.bind("q", "ex", "k")
    store.publish("ex", "k", msg("a"))
    store.publish("ex", "k", msg("b"))
    assert store.delete_queue("q") == 2
    assert not queue_exists(store, "q")
    store.declare_queue("q")
    assert depth(store, "q") == 0
    assert store.publish("ex", "k", msg("c")) == []


@pytest.mark.parametrize("value", [0, -1, "1000", True, [5000]])
def test_invalid_x_expires_raises(store, value):
    with pytest.raises(errors.InvalidRequest, match="x-expires"):
        store.declare_queue("q", arguments={"x-expires": value})
    assert not queue_exists(store, "q")


@pytest.mark.parametrize("value", [-1, "1000", True, [1]])
def test_invalid_x_message_ttl_raises(store, value):
    with pytest.raises(errors.InvalidRequest, match="x-message-ttl"):
        store.declare_queue("q", arguments={"x-message-ttl": value})
    assert not queue_exists(store, "q")


def test_valid_queue_arguments_are_accepted(store):
    info = store.declare_queue("q", arguments={"x-expires": 60_000, "x-message-ttl": 0})
    assert info.messages == 0


# -- claims and leases --------------------------------------------------------------------


def test_fifo_within_equal_priority(store):
    for i in range(5):
        store.publish("", "q", msg(str(i)))
    got = [bodies(consume(store, "s1", "q")) for _ in range(5)]
    assert got == [["0"], ["1"], ["2"], ["3"], ["4"]]
    assert consume(store, "s1", "q") == []


def test_higher_priority_first(store):
    store.publish("", "q", msg("p0-a"))
    store.publish("", "q", msg("p5", priority=5))
    store.publish("", "q", msg("p0-b", priority=0))
    store.publish("", "q", msg("p9", priority=9))
    store.publish("", "q", msg("p5-b", priority=5))
    assert bodies(consume(store, "s1", "q", max_messages=10)) == [
        "p9", "p5", "p5-b", "p0-a", "p0-b"
    ]


def test_invalid_priority_raises(store):
    for bad in (-1, "5", True):
        with pytest.raises(errors.InvalidRequest, match="priority"):
            store.publish("", "q", msg("x", priority=bad))
    assert not queue_exists(store, "q")


def test_priority_across_queues(store):
    store.publish("", "low", msg("low"))
    store.publish("", "high", msg("high", priority=3))
    assert bodies(consume(store, "s1", "low", "high")) == ["high"]


def test_max_messages(store):
    for i in range(5):
        store.publish("", "q", msg(str(i)))
    assert bodies(consume(store, "s1", "q", max_messages=3)) == ["0", "1", "2"]
    assert bodies(consume(store, "s1", "q", max_messages=3)) == ["3", "4"]
    assert consume(store, "s1", "q", max_messages=3) == []


def test_max_slots_skips_a_message_that_does_not_fit(store):
    store.publish("", "q", msg("big", slots=3))
    store.publish("", "q", msg("one", slots=1))
    store.publish("", "q", msg("two", slots=2))
    store.publish("", "q", msg("default"))
    got = consume(store, "s1", "q", max_slots=2, max_messages=10)
    assert bodies(got) == ["one", "default"]
    assert bodies(consume(store, "s2", "q", max_slots=2, max_messages=10)) == ["two"]
    # The big one waits for a worker that has room for it.
    assert consume(store, "s3", "q", max_slots=2, max_messages=10) == []
    assert bodies(consume(store, "s4", "q", max_slots=5, max_messages=10)) == ["big"]


def test_max_slots_is_a_budget_across_the_claim(store):
    store.publish("", "q", msg("a", slots=2))
    store.publish("", "q", msg("b", slots=2))
    store.publish("", "q", msg("c", slots=1))
    assert bodies(consume(store, "s1", "q", max_slots=3, max_messages=3)) == ["a", "c"]
    assert bodies(consume(store, "s2", "q", max_slots=1, max_messages=3)) == []
    assert bodies(consume(store, "s2", "q", max_slots=2, max_messages=3)) == ["b"]


def test_no_ack_queues_are_not_limited_by_max_slots(store):
    store.publish("", "tasks", msg("task", slots=2))
    store.publish("", "tasks", msg("small", slots=1))
    store.publish("", "pidbox", msg("control", slots=5))
    store.touch_session("s1", PRINCIPAL, ["tasks", "pidbox"])
    got = store.claim("s1", [("tasks", False), ("pidbox", True)], max_slots=1, max_messages=10)
    assert sorted(bodies(got)) == ["control", "small"]
    # The no_ack message was taken, not leased: it is gone even when the session closes.
    store.close_session("s1")
    assert depth(store, "pidbox") == 0
    assert depth(store, "tasks") == 2


@pytest.mark.parametrize("slots", [0, -2, "2", True, 1.5])
def test_invalid_pool_slots_raise(store, slots):
    with pytest.raises(errors.InvalidRequest, match=HEADER_POOL_SLOTS):
        store.publish("", "q", msg("x", slots=slots))
    assert not queue_exists(store, "q")


def test_leased_message_is_not_claimed_by_another_session(store):
    store.publish("", "q", msg("a"))
    assert bodies(consume(store, "s1", "q")) == ["a"]
    assert consume(store, "s2", "q") == []
    assert consume(store, "s1", "q") == []


def test_no_ack_claim_deletes_the_message(store):
    store.publish("", "q", msg("a"))
    [delivery] = consume(store, "s1", "q", no_ack=True)
    assert delivery.message["body"] == "a"
    assert depth(store, "q") == 0
    assert store.close_session("s1") == 0
    assert consume(store, "s2", "q") == []


def test_ack_deletes_and_second_ack_reports_unknown(store):
    store.publish("", "q", msg("a"))
    [delivery] = consume(store, "s1", "q")
    tag = tag_of(delivery)
    assert store.ack("s1", [tag]) == (1, [])
    assert store.ack("s1", [tag]) == (0, [tag])
    assert store.close_session("s1") == 0
    assert consume(store, "s2", "q") == []


def test_ack_reports_exactly_the_unknown_tags(store):
    for i in range(3):
        store.publish("", "q", msg(str(i)))
    deliveries = consume(store, "s1", "q", max_messages=3)
    tags = [tag_of(d) for d in deliveries]
    store.ack("s1", [tags[0]])
    assert store.ack("s1", [tags[0], tags[1], "garbage", "99999.abc"]) == (
        1,
        [tags[0], "garbage", "99999.abc"],
    )
    assert store.reject("s1", [tags[1], tags[2]], requeue=True) == (1, [tags[1]])


def test_ack_by_another_session_does_not_settle(store):
    store.publish("", "q", msg("a"))
    [delivery] = consume(store, "s1", "q")
    store.touch_session("s2", PRINCIPAL, ["q"])
    assert store.ack("s2", [tag_of(delivery)]) == (0, [tag_of(delivery)])
    assert store.reject("s2", [tag_of(delivery)], requeue=True) == (0, [tag_of(delivery)])
    assert store.ack("s1", [tag_of(delivery)]) == (1, [])


def test_reject_requeue_makes_message_claimable_again_as_redelivered(store):
    store.publish("", "q", msg("a"))
    [first] = consume(store, "s1", "q")
    assert redelivered(first) is False
    assert store.reject("s1", [tag_of(first)], requeue=True) == (1, [])
    assert depth(store, "q") == 1
    [again] = consume(store, "s2", "q")
    assert again.message["body"] == "a"
    assert redelivered(again) is True
    assert tag_of(again) != tag_of(first)


def test_reject_without_requeue_deletes(store):
    store.publish("", "q", msg("a"))
    [delivery] = consume(store, "s1", "q")
    assert store.reject("s1", [tag_of(delivery)], requeue=False) == (1, [])
    assert store.close_session("s1") == 0
    assert consume(store, "s2", "q") == []


def test_stale_tag_does_not_settle_a_newer_lease(store):
    store.publish("", "q", msg("a"))
    [old] = consume(store, "s1", "q")
    store.reject("s1", [tag_of(old)], requeue=True)
    [new] = consume(store, "s1", "q")
    old_tag, new_tag = tag_of(old), tag_of(new)
    assert old_tag.split(".")[0] == new_tag.split(".")[0]  # same message, new lease
    assert store.ack("s1", [old_tag]) == (0, [old_tag])
    assert store.reject("s1", [old_tag], requeue=False) == (0, [old_tag])
    assert consume(store, "s2", "q") == []  # still leased
    assert store.ack("s1", [new_tag]) == (1, [])


def test_close_session_releases_leases_as_redelivered(store):
    for i in range(3):
        store.publish("", "q", msg(str(i)))
    leased = consume(store, "s1", "q", max_messages=2)
    assert store.close_session("s1") == 2
    again = consume(store, "s2", "q", max_messages=10)
    assert bodies(again) == ["0", "1", "2"]
    assert [redelivered(d) for d in again] == [True, True, False]
    assert store.ack("s1", [tag_of(d) for d in leased])[0] == 0


def test_close_session_deletes_auto_delete_queues_it_consumed(store):
    store.declare_queue("reply.s1", auto_delete=True)
    store.declare_queue("shared", auto_delete=True)
    store.declare_queue("durable")
    store.touch_session("s1", PRINCIPAL, ["reply.s1", "shared", "durable"])
    store.touch_session("s2", PRINCIPAL, ["shared"])
    store.close_session("s1")
    assert not queue_exists(store, "reply.s1")
    assert queue_exists(store, "shared")  # s2 still consumes it
    assert queue_exists(store, "durable")
    store.close_session("s2")
    assert not queue_exists(store, "shared")


def test_touch_session_on_closed_session_raises(store):
    store.touch_session("s1", PRINCIPAL, ["q"])
    store.close_session("s1")
    with pytest.raises(errors.SessionClosed):
        store.touch_session("s1", PRINCIPAL, ["q"])


def test_claim_on_closed_session_raises_and_leases_nothing(store):
    store.publish("", "q", msg("a"))
    store.touch_session("s1", PRINCIPAL, ["q"])
    store.close_session("s1")
    with pytest.raises(errors.SessionClosed):
        store.claim("s1", [("q", False)])
    with pytest.raises(errors.SessionClosed):
        store.claim("never-opened", [("q", False)])
    assert bodies(consume(store, "s2", "q")) == ["a"]


# -- expiry (fake clock) ------------------------------------------------------------------


def test_silent_session_loses_its_leases_touched_session_keeps_them(timed, clock):
    timed.publish("", "q", msg("a"))
    timed.publish("", "q", msg("b"))
    [a] = consume(timed, "silent", "q")
    [b] = consume(timed, "alive", "q")
    clock.advance(6)
    timed.touch_session("alive", PRINCIPAL, ["q"])
    clock.advance(6)  # silent for 12 s > 10 s; alive for 6 s
    counts = timed.reap()
    assert counts["sessions_expired"] == 1
    assert counts["leases_released"] == 1
    [again] = consume(timed, "new", "q", max_messages=10)
    assert again.message["body"] == "a"
    assert redelivered(again) is True
    assert timed.ack("silent", [tag_of(a)]) == (0, [tag_of(a)])
    assert timed.ack("alive", [tag_of(b)]) == (1, [])
    with pytest.raises(errors.SessionClosed):
        timed.touch_session("silent", PRINCIPAL, ["q"])


def test_reap_leaves_sessions_within_lease_timeout(timed, clock):
    timed.publish("", "q", msg("a"))
    consume(timed, "s1", "q")
    clock.advance(9.5)
    assert timed.reap()["sessions_expired"] == 0
    assert consume(timed, "s2", "q") == []


def test_message_expiration_property(timed, clock):
    timed.publish("", "q", msg("short", expiration="1000"))
    timed.publish("", "q", msg("long", expiration="60000", slots=2))
    timed.publish("", "q", msg("forever", slots=3))
    clock.advance(0.5)
    assert timed.ready_min_slots(["q"]) == {"q": 1}
    clock.advance(1)
    assert timed.ready_min_slots(["q"]) == {"q": 2}
    got = consume(timed, "s1", "q", max_messages=10)
    assert bodies(got) == ["long", "forever"]
    timed.close_session("s1")
    assert timed.reap()["messages_expired"] == 1
    assert depth(timed, "q") == 2


def test_message_expiration_zero_expires_at_once(timed, clock):
    timed.publish("", "q", msg("now", expiration="0"))
    assert consume(timed, "s1", "q") == []


def test_invalid_message_expiration_raises(store):
    for bad in ("soon", "-5", -1):
        with pytest.raises(errors.InvalidRequest, match="expiration"):
            store.publish("", "q", msg("x", expiration=bad))


def test_queue_message_ttl(timed, clock):
    timed.declare_queue("q", arguments={"x-message-ttl": 2000})
    timed.publish("", "q", msg("a"))
    timed.publish("", "q", msg("b", expiration="500"))  # the shorter limit wins
    timed.publish("", "other", msg("c"))
    clock.advance(1)
    timed.publish("", "q", msg("d"))
    clock.advance(1.5)  # a is 2.5 s old, b expired at 0.5 s, d is 1.5 s old
    assert bodies(consume(timed, "s1", "q", "other", max_messages=10)) == ["c", "d"]
    timed.close_session("s1")
    assert timed.reap()["messages_expired"] == 2  # a and b
    clock.advance(1)  # d is 2.5 s old now; c has no TTL
    assert timed.reap()["messages_expired"] == 1
    assert (depth(timed, "q"), depth(timed, "other")) == (0, 1)


def test_leased_message_outliving_its_ttl_is_not_redelivered(timed, clock):
    timed.publish("", "q", msg("a", expiration="1000"))
    [delivery] = consume(timed, "s1", "q")
    clock.advance(2)
    assert timed.reap()["messages_expired"] == 0  # leased: not touched
    assert timed.ack("s1", [tag_of(delivery)]) == (1, [])


def test_queue_x_expires(timed, clock):
    timed.declare_queue("idle", arguments={"x-expires": 5000})
    timed.declare_queue("used", arguments={"x-expires": 5000})
    timed.declare_queue("plain")
    timed.publish("", "idle", msg("lost"))
    timed.touch_session("s1", PRINCIPAL, ["used"])
    clock.advance(6)
    counts = timed.reap()
    assert counts["queues_expired"] == 1
    assert not queue_exists(timed, "idle")
    assert queue_exists(timed, "used")  # a live session consumes it
    assert queue_exists(timed, "plain")
    # The session dies; its queue counts as used until then.
    clock.advance(5)
    assert timed.reap()["sessions_expired"] == 1
    assert queue_exists(timed, "used")
    clock.advance(4)
    timed.reap()
    assert queue_exists(timed, "used")
    clock.advance(2)
    assert timed.reap()["queues_expired"] == 1
    assert not queue_exists(timed, "used")


def test_redeclare_keeps_x_expires_queue_alive(timed, clock):
    timed.declare_queue("q", arguments={"x-expires": 5000})
    clock.advance(4)
    timed.declare_queue("q", arguments={"x-expires": 5000})
    clock.advance(4)
    assert timed.reap()["queues_expired"] == 0
    assert queue_exists(timed, "q")


# -- concurrency --------------------------------------------------------------------------


def test_concurrent_claims_deliver_every_message_exactly_once(store):
    total, workers = 200, 8
    for i in range(total):
        store.publish("", "q", msg(str(i)))
    start = threading.Barrier(workers)

    def work(n: int) -> list[str]:
        session = f"s{n}"
        store.touch_session(session, PRINCIPAL, ["q"])
        start.wait()
        got = []
        while True:
            batch = store.claim(session, [("q", False)], max_messages=3)
            if not batch:
                return got
            got.extend(bodies(batch))
            settled, unknown = store.ack(session, [tag_of(d) for d in batch])
            assert (settled, unknown) == (len(batch), [])

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(work, range(workers)))
    everything = [body for got in results for body in got]
    assert len(everything) == total
    assert sorted(map(int, everything)) == list(range(total))
    assert depth(store, "q") == 0


def test_concurrent_incr_is_atomic(store):
    workers, increments = 8, 25
    start = threading.Barrier(workers)

    def work(_: int) -> list[int]:
        start.wait()
        return [store.incr_result("chord-counter") for _ in range(increments)]

    with ThreadPoolExecutor(workers) as pool:
        seen = [v for values in pool.map(work, range(workers)) for v in values]
    assert sorted(seen) == list(range(1, workers * increments + 1))
    assert store.get_result("chord-counter") == b"200"


def test_concurrent_declares_of_one_queue_all_succeed(store):
    workers = 8
    store.declare_queue("celery")
    start = threading.Barrier(workers)

    def work(n: int) -> None:
        start.wait()
        for i in range(10):
            store.declare_queue("celery")
            store.declare_queue(f"fresh{i}")
            store.publish("", f"fresh{i}", msg(f"{n}.{i}"))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(workers)))
    assert store.queue_info("celery").messages == 0
    assert [depth(store, f"fresh{i}") for i in range(10)] == [workers] * 10


# -- results ------------------------------------------------------------------------------


def test_set_get_and_mget_keep_order(store):
    store.set_result("a", b"1")
    store.set_result("b", b"2")
    store.set_result("a", b"one")  # overwrite
    assert store.get_result("a") == b"one"
    assert store.get_result("missing") is None
    assert store.mget_results(["b", "missing", "a", "b"]) == [b"2", None, b"one", b"2"]
    assert store.mget_results([]) == []


def test_binary_values_round_trip(store):
    value = bytes(range(256)) * 4 + b"\x00"
    store.set_result("bin", value)
    assert bytes(store.get_result("bin")) == value


def test_large_value_round_trips(store):
    value = b"x" * (2 * 1024 * 1024)
    store.set_result("big", value)
    assert bytes(store.get_result("big")) == value


def test_result_expiry(timed, clock):
    timed.set_result("k", b"v", expires=10)
    timed.set_result("keep", b"v")
    clock.advance(9)
    assert timed.get_result("k") == b"v"
    clock.advance(2)
    assert timed.get_result("k") is None
    assert timed.mget_results(["k", "keep"]) == [None, b"v"]
    assert timed.reap()["results_expired"] == 1
    assert timed.get_result("keep") == b"v"


def test_set_without_expiry_clears_an_old_expiry(timed, clock):
    timed.set_result("k", b"v", expires=10)
    timed.set_result("k", b"w")
    clock.advance(100)
    assert timed.get_result("k") == b"w"


def test_delete_result(store):
    store.set_result("k", b"v")
    store.delete_result("k")
    assert store.get_result("k") is None
    store.delete_result("k")  # deleting a missing key is fine


def test_incr(store):
    assert store.incr_result("n") == 1
    assert store.incr_result("n", 5) == 6
    assert store.incr_result("n", -10) == -4
    assert store.get_result("n") == b"-4"
    store.set_result("m", b"41")
    assert store.incr_result("m") == 42


def test_incr_on_non_integer_conflicts(store):
    store.set_result("k", b"not a number")
    with pytest.raises(errors.Conflict):
        store.incr_result("k")
    assert store.get_result("k") == b"not a number"


def test_incr_restarts_an_expired_counter(timed, clock):
    timed.incr_result("n", 5, expires=10)
    clock.advance(11)
    assert timed.get_result("n") is None
    assert timed.incr_result("n") == 1


def test_expire_result(timed, clock):
    timed.set_result("k", b"v")
    assert timed.expire_result("k", 5) is True
    assert timed.expire_result("missing", 5) is False
    clock.advance(4)
    assert timed.get_result("k") == b"v"
    assert timed.expire_result("k", None) is True  # persist again
    clock.advance(100)
    assert timed.get_result("k") == b"v"
    timed.expire_result("k", 1)
    clock.advance(2)
    assert timed.get_result("k") is None


# -- tokens -------------------------------------------------------------------------------


def test_create_and_look_up_token(store):
    token = store.create_token("site-a")
    assert token.startswith("ekt_") and len(token) > 30
    assert store.principal_for_token(token) == "site-a"
    assert store.principal_for_token(token + "x") is None
    assert store.principal_for_token("") is None


def test_token_is_stored_only_as_sha256(store):
    token = store.create_token("site-a")
    with store.engine.connect() as conn:
        rows = [tuple(row) for row in conn.execute(select(models.token)).all()]
    assert len(rows) == 1
    assert all(token not in str(value) for value in rows[0])
    assert hashlib.sha256(token.encode()).hexdigest() in rows[0]


def test_duplicate_token_name_conflicts(store):
    token = store.create_token("site-a")
    with pytest.raises(errors.Conflict):
        store.create_token("site-a")
    assert store.principal_for_token(token) == "site-a"


def test_revoke_token(store):
    token = store.create_token("site-a")
    other = store.create_token("site-b")
    store.revoke_token("site-a")
    assert store.principal_for_token(token) is None
    assert store.principal_for_token(other) == "site-b"
    with pytest.raises(errors.NotFound):
        store.revoke_token("site-a")
    with pytest.raises(errors.NotFound):
        store.revoke_token("never")
    assert store.principal_for_token(store.create_token("site-a")) == "site-a"


def test_list_tokens(timed, clock):
    assert timed.list_tokens() == []
    timed.create_token("b-site")
    clock.advance(1)
    timed.create_token("a-site")
    assert timed.list_tokens() == [
        {"name": "a-site", "created_at": clock.now},
        {"name": "b-site", "created_at": clock.now - 1},
    ]


# -- wake-up hooks ------------------------------------------------------------------------


class RecordingWakeup(Wakeup):
    """Records every signal, and what another connection sees once it was committed."""

    def __init__(self) -> None:
        self.engine = None
        self.in_tx: list[tuple[set[str], set[str]]] = []
        self.calls: list[tuple[set[str], set[str], int]] = []

    def in_transaction(self, conn, queues, sessions) -> None:
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
def recorder(store) -> tuple[Store, RecordingWakeup]:
    wakeup = RecordingWakeup()
    wakeup.engine = store.engine
    return Store(store.engine, wakeup=wakeup), wakeup


def test_publish_reports_routed_queues_after_commit(recorder):
    store, wakeup = recorder
    store.declare_exchange("bcast", "fanout")
    store.declare_queue("a")
    store.declare_queue("b")
    store.bind("a", "bcast")
    store.bind("b", "bcast")
    assert wakeup.calls == []  # declarations make nothing available
    store.publish("bcast", "", msg("x"))
    assert wakeup.calls == [({"a", "b"}, set(), 2)]  # both copies visible at the signal
    assert wakeup.in_tx == [({"a", "b"}, set())]


def test_failed_publish_signals_nothing(recorder):
    store, wakeup = recorder
    store.declare_exchange("ex", "direct")
    with pytest.raises(errors.Unroutable):
        store.publish("ex", "k", msg("x"), mandatory=True)
    assert store.publish("ex", "k", msg("x")) == []
    assert wakeup.calls == [] and wakeup.in_tx == []


def test_ack_reports_the_session(recorder):
    store, wakeup = recorder
    store.publish("", "q", msg("x"))
    [delivery] = consume(store, "s1", "q")
    wakeup.calls.clear()
    store.ack("s1", [tag_of(delivery)])
    assert wakeup.calls == [(set(), {"s1"}, 0)]


def test_requeue_reports_the_queue(recorder):
    store, wakeup = recorder
    store.publish("", "q", msg("x"))
    [delivery] = consume(store, "s1", "q")
    wakeup.calls.clear()
    store.reject("s1", [tag_of(delivery)], requeue=True)
    assert wakeup.calls == [({"q"}, {"s1"}, 1)]


def test_close_session_reports_released_queues(recorder):
    store, wakeup = recorder
    store.publish("", "q", msg("x"))
    consume(store, "s1", "q")
    wakeup.calls.clear()
    store.close_session("s1")
    assert wakeup.calls == [({"q"}, set(), 1)]

