"""No starvation of big tasks: the broker's ``starvation_guard`` in ``claim``.

A consumer with fewer free slots than the next task in line needs keeps taking smaller
tasks only until that task has waited ``starvation_guard`` seconds; then it takes none
from behind it, its slots free up as its running tasks end, and the big one runs.
Run per database like ``test_broker.py``; time runs on a :class:`FakeClock`.
"""

from __future__ import annotations

import pytest

from edge_kombu.server.broker import Broker
from edge_kombu.server.sql import SQL
from tests.server.helpers import PRINCIPAL, bodies, msg

GUARD = 2.0


@pytest.fixture
def guarded(sql, clock) -> Broker:
    return Broker(SQL(sql.engine, clock=clock), starvation_guard=GUARD)


@pytest.fixture
def line(guarded) -> Broker:
    """Queue ``tasks`` holds a 3-slot task (the oldest), then three 1-slot tasks."""
    guarded.publish("", "tasks", msg("big", slots=3))
    for body in ("s1", "s2", "s3"):
        guarded.publish("", "tasks", msg(body, slots=1))
    return guarded


def take(broker: Broker, session: str, *, max_slots: int, total_slots: int | None,
         queues=(("tasks", False),), max_messages: int = 1) -> list[str]:
    broker.touch_session(session, PRINCIPAL, [name for name, _ in queues])
    return bodies(broker.claim(session, list(queues), max_slots=max_slots,
                              total_slots=total_slots, max_messages=max_messages))


def test_small_tasks_go_first_until_the_big_one_has_waited_the_guard(line, clock):
    assert take(line, "c1", max_slots=1, total_slots=3) == ["s1"]
    clock.advance(GUARD - 0.1)
    assert take(line, "c1", max_slots=1, total_slots=3) == ["s2"]
    clock.advance(0.1)  # the big task has now waited exactly the guard
    assert take(line, "c1", max_slots=1, total_slots=3) == []
    assert take(line, "c1", max_slots=2, total_slots=3, max_messages=10) == []
    clock.advance(60)
    assert take(line, "c1", max_slots=1, total_slots=3) == []

    # Its running tasks ended: three free slots, the big one fits.
    assert take(line, "c1", max_slots=3, total_slots=3) == ["big"]
    assert take(line, "c1", max_slots=1, total_slots=3) == ["s3"]


def test_no_ack_queues_still_deliver_while_the_big_one_waits(line, clock):
    line.publish("", "pidbox", msg("ping", slots=5))
    line.publish("", "pidbox", msg("stats"))
    clock.advance(GUARD)
    queues = (("tasks", False), ("pidbox", True))
    assert take(line, "c1", max_slots=1, total_slots=3, queues=queues, max_messages=10) == [
        "ping", "stats"]
    assert take(line, "c1", max_slots=1, total_slots=3, queues=queues, max_messages=10) == []
    assert line.queue_info("tasks").messages == 4
    assert take(line, "c1", max_slots=3, total_slots=3, queues=queues) == ["big"]


def test_a_consumer_that_can_never_run_the_big_one_is_not_held_back(line, clock):
    clock.advance(GUARD + 10)
    assert take(line, "small", max_slots=1, total_slots=2) == ["s1"]
    assert take(line, "small", max_slots=2, total_slots=2, max_messages=10) == ["s2", "s3"]
    assert take(line, "tiny", max_slots=1, total_slots=1) == []  # nothing left that fits
    assert line.queue_info("tasks").messages == 1


def test_the_guard_holds_only_a_consumer_that_could_run_the_big_one(line, clock):
    clock.advance(GUARD)
    assert take(line, "big-worker", max_slots=1, total_slots=4) == []
    assert take(line, "small-worker", max_slots=1, total_slots=2) == ["s1"]
    assert take(line, "big-worker", max_slots=4, total_slots=4, max_messages=10) == [
        "big", "s2"]


def test_the_big_one_in_line_for_this_consumer_is_guarded(guarded, clock):
    """A task too big for this consumer ahead in line does not lift the guard for the
    next task it can run: otherwise that one starves behind a steady flow of small ones."""
    guarded.publish("", "tasks", msg("huge", slots=5))
    guarded.publish("", "tasks", msg("big", slots=3))
    guarded.publish("", "tasks", msg("s1", slots=1))
    guarded.publish("", "tasks", msg("s2", slots=1))
    assert take(guarded, "c1", max_slots=1, total_slots=3) == ["s1"]
    clock.advance(GUARD)
    assert take(guarded, "c1", max_slots=1, total_slots=3) == []
    assert take(guarded, "c1", max_slots=3, total_slots=3) == ["big"]
    assert take(guarded, "c1", max_slots=1, total_slots=3) == ["s2"]


def test_priority_decides_which_task_is_next_in_line(guarded, clock):
    guarded.publish("", "tasks", msg("big", slots=3))
    guarded.publish("", "tasks", msg("urgent", slots=1, priority=9))
    guarded.publish("", "tasks", msg("s1", slots=1))
    clock.advance(GUARD)
    assert take(guarded, "c1", max_slots=1, total_slots=3) == ["urgent"]
    assert take(guarded, "c1", max_slots=1, total_slots=3) == []


def test_an_unlimited_consumer_is_never_held_back(line, clock):
    clock.advance(GUARD)
    line.touch_session("c1", PRINCIPAL, ["tasks"])
    assert bodies(line.claim("c1", [("tasks", False)], max_messages=10)) == [
        "big", "s1", "s2", "s3"]
