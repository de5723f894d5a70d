"""Housekeeping, tested directly against the database under test: what expires (silent
sessions and their leases, TTL'd messages, idle queues) and the interval scheduler.

Run per database with ``EDGE_KOMBU_TEST_DB``; time runs on a :class:`FakeClock`.
"""

from __future__ import annotations

import pytest

from edge_kombu import errors
from edge_kombu.server.broker import Broker
from edge_kombu.server.housekeeping import Housekeeping, IntervalScheduler
from edge_kombu.server.results import Results
from edge_kombu.server.sql import SQL
from tests.server.helpers import (
    PRINCIPAL,
    bodies,
    consume,
    depth,
    msg,
    queue_exists,
    redelivered,
    tag_of,
)


@pytest.fixture
def timed(sql, clock) -> Broker:
    """A broker on the same database whose time is ``clock`` and whose leases last 10 s."""
    return Broker(SQL(sql.engine, clock=clock), lease_timeout=10.0)


@pytest.fixture
def reap(timed):
    """One round of expiry, as the reaper runs it every second."""
    return Housekeeping(timed.sql, broker=timed, results=Results(timed.sql)).expire


# -- expiry (fake clock) ------------------------------------------------------------------


def test_silent_session_loses_its_leases_touched_session_keeps_them(timed, clock, reap):
    timed.publish("", "q", msg("a"))
    timed.publish("", "q", msg("b"))
    [a] = consume(timed, "silent", "q")
    [b] = consume(timed, "alive", "q")
    clock.advance(6)
    timed.touch_session("alive", PRINCIPAL, ["q"])
    clock.advance(6)  # silent for 12 s > 10 s; alive for 6 s
    counts = reap()
    assert counts["sessions_expired"] == 1
    assert counts["leases_released"] == 1
    [again] = consume(timed, "new", "q", max_messages=10)
    assert again.message["body"] == "a"
    assert redelivered(again) is True
    assert timed.ack("silent", [tag_of(a)]) == (0, [tag_of(a)])
    assert timed.ack("alive", [tag_of(b)]) == (1, [])
    with pytest.raises(errors.SessionClosed):
        timed.touch_session("silent", PRINCIPAL, ["q"])


def test_reap_leaves_sessions_within_lease_timeout(timed, clock, reap):
    timed.publish("", "q", msg("a"))
    consume(timed, "s1", "q")
    clock.advance(9.5)
    assert reap()["sessions_expired"] == 0
    assert consume(timed, "s2", "q") == []


def test_message_expiration_property(timed, clock, reap):
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
    assert reap()["messages_expired"] == 1
    assert depth(timed, "q") == 2


def test_message_expiration_zero_expires_at_once(timed, clock):
    timed.publish("", "q", msg("now", expiration="0"))
    assert consume(timed, "s1", "q") == []


def test_invalid_message_expiration_raises(broker):
    for bad in ("soon", "-5", -1):
        with pytest.raises(errors.InvalidRequest, match="expiration"):
            broker.publish("", "q", msg("x", expiration=bad))


def test_queue_message_ttl(timed, clock, reap):
    timed.declare_queue("q", arguments={"x-message-ttl": 2000})
    timed.publish("", "q", msg("a"))
    timed.publish("", "q", msg("b", expiration="500"))  # the shorter limit wins
    timed.publish("", "other", msg("c"))
    clock.advance(1)
    timed.publish("", "q", msg("d"))
    clock.advance(1.5)  # a is 2.5 s old, b expired at 0.5 s, d is 1.5 s old
    assert bodies(consume(timed, "s1", "q", "other", max_messages=10)) == ["c", "d"]
    timed.close_session("s1")
    assert reap()["messages_expired"] == 2  # a and b
    clock.advance(1)  # d is 2.5 s old now; c has no TTL
    assert reap()["messages_expired"] == 1
    assert (depth(timed, "q"), depth(timed, "other")) == (0, 1)


def test_leased_message_outliving_its_ttl_is_not_redelivered(timed, clock, reap):
    timed.publish("", "q", msg("a", expiration="1000"))
    [delivery] = consume(timed, "s1", "q")
    clock.advance(2)
    assert reap()["messages_expired"] == 0  # leased: not touched
    assert timed.ack("s1", [tag_of(delivery)]) == (1, [])


def test_queue_x_expires(timed, clock, reap):
    timed.declare_queue("idle", arguments={"x-expires": 5000})
    timed.declare_queue("used", arguments={"x-expires": 5000})
    timed.declare_queue("plain")
    timed.publish("", "idle", msg("lost"))
    timed.touch_session("s1", PRINCIPAL, ["used"])
    clock.advance(6)
    counts = reap()
    assert counts["queues_expired"] == 1
    assert not queue_exists(timed, "idle")
    assert queue_exists(timed, "used")  # a live session consumes it
    assert queue_exists(timed, "plain")
    # The session dies; its queue counts as used until then.
    clock.advance(5)
    assert reap()["sessions_expired"] == 1
    assert queue_exists(timed, "used")
    clock.advance(4)
    reap()
    assert queue_exists(timed, "used")
    clock.advance(2)
    assert reap()["queues_expired"] == 1
    assert not queue_exists(timed, "used")


def test_redeclare_keeps_x_expires_queue_alive(timed, clock, reap):
    timed.declare_queue("q", arguments={"x-expires": 5000})
    clock.advance(4)
    timed.declare_queue("q", arguments={"x-expires": 5000})
    clock.advance(4)
    assert reap()["queues_expired"] == 0
    assert queue_exists(timed, "q")


# -- the interval scheduler -----------------------------------------------------------------


def test_scheduler_runs_each_job_at_its_own_interval(clock):
    ran: list[str] = []
    scheduler = (
        IntervalScheduler("test", tick=1.0, clock=clock)
        .every(0, "tick", lambda: ran.append("tick"))
        .every(30, "slow", lambda: ran.append("slow"))
    )
    assert scheduler.run_due() == ["tick", "slow"]  # every job runs at the first tick
    clock.advance(29)
    assert scheduler.run_due() == ["tick"]
    clock.advance(1)
    assert scheduler.run_due() == ["tick", "slow"]
    assert ran == ["tick", "slow", "tick", "tick", "slow"]


def test_a_failing_job_does_not_stop_the_others(clock, caplog):
    def broken() -> None:
        raise RuntimeError("database away")

    ran: list[str] = []
    scheduler = (
        IntervalScheduler("test", tick=1.0, clock=clock)
        .every(0, "broken", broken)
        .every(0, "fine", lambda: ran.append("fine"))
    )
    assert scheduler.run_due() == ["broken", "fine"]
    assert ran == ["fine"]
    assert "broken failed" in caplog.text
