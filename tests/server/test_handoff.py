"""Direct hand-off: a publish leases its message to a consume waiting in the same process.

Tested against the database under test (``EDGE_KOMBU_TEST_DB``), each consume waiting in
a thread as it would in the API server. Another :class:`Broker` on the same database
with a registry of its own stands for another API process: what it does is not heard by
the waiting consume. Nothing sleeps: the tests wait on the registry's state.
"""

from __future__ import annotations

import sys
import threading

import pytest
from sqlalchemy import select

from edge_kombu import errors
from edge_kombu.protocol import HEADER_POOL_SLOTS
from edge_kombu.server import models
from edge_kombu.server.broker import Broker
from edge_kombu.server.grants import TaskGrants
from edge_kombu.server.jobs import JobHistory
from edge_kombu.server.sql import SQL
from edge_kombu.server.wakeup import LocalWakeup, WaiterRegistry
from tests.helpers import wait_for
from tests.server.helpers import PRINCIPAL, bodies, consume, depth, msg, redelivered, tag_of


def _wired(engine, clock=None, **kwargs) -> Broker:
    """A broker wired as in the API server: its transactions wake its own registry."""
    registry = WaiterRegistry()
    sql = SQL(engine, wakeup=LocalWakeup(registry), **({"clock": clock} if clock else {}))
    return Broker(sql, waiters=registry, **kwargs)


@pytest.fixture
def line(sql, jobs) -> Broker:
    return _wired(sql.engine, history=jobs, grants=TaskGrants(sql))


@pytest.fixture
def elsewhere(sql) -> Broker:
    """The same database through another API process."""
    return Broker(SQL(sql.engine), lease_timeout=30.0)


def task(task_id: str, **kwargs) -> dict:
    message = msg(task_id, **kwargs)
    message["headers"].update(id=task_id, task="tests.add")
    return message


class Gate:
    """A consume's credential check that holds the consume at its second call (the one
    after it was woken), until opened: what the database holds meanwhile shows whether
    the publish had leased the message or left it for the consume to claim."""

    def __init__(self) -> None:
        self.calls = 0
        self.held = threading.Event()
        self.opened = threading.Event()

    def __call__(self, fresh: bool = False) -> bool:
        self.calls += 1
        if self.calls == 2:
            self.held.set()
            assert self.opened.wait(30)
        return True


class Waiting(threading.Thread):
    """One consume of ``session`` waiting on ``broker`` (up to 30 s)."""

    def __init__(self, broker: Broker, session: str, queues=("q",), **kwargs) -> None:
        super().__init__(daemon=True)
        self.broker, self.session, self.queues, self.kwargs = broker, session, queues, kwargs
        self.found: list | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.found = self.broker.consume(self.session, PRINCIPAL,
                                             [(q, False) for q in self.queues], wait=30,
                                             **self.kwargs)
        except BaseException as exc:  # noqa: BLE001 - read by the test
            self.error = exc

    def __enter__(self) -> Waiting:
        self.start()
        wait_for(lambda: self.broker.waiters.offered(self.session), timeout=10,
                 message=f"a consume of {self.session} waits, open to a hand-off")
        return self

    def __exit__(self, *exc) -> None:
        self.broker.waiters.wake_sessions([self.session])  # ends it if still waiting
        self.join(10)
        assert not self.is_alive()

    def answer(self) -> list:
        self.join(10)
        assert not self.is_alive()
        if self.error is not None:
            raise self.error
        return self.found


def leased_to(broker: Broker, body: str) -> str | None:
    with broker.sql.connect() as conn:
        payloads = conn.execute(select(models.message.c.session, models.message.c.payload)).all()
    [session] = [s for s, payload in payloads if f'"body":"{body}"' in payload]
    return session


def test_a_publish_leases_its_message_to_the_waiting_consume(line):
    """Leased inside the publishing transaction: the consume, held before it could claim,
    finds it leased to its session already; it is acked as any claimed message."""
    line.declare_queue("q")
    gate = Gate()
    with Waiting(line, "s1", still_valid=gate) as waiting:
        line.publish("", "q", task("t1"))
        assert gate.held.wait(10)
        assert leased_to(line, "t1") == "s1"
        gate.opened.set()
        [delivery] = waiting.answer()
    assert delivery.handed and bodies([delivery]) == ["t1"] and not redelivered(delivery)
    assert line.history.page()["jobs"][0]["state"] == "received"
    assert line.ack("s1", [tag_of(delivery)]) == (1, [])
    assert depth(line, "q") == 0
    assert line.history.page()["jobs"][0]["state"] == "done"


def test_a_higher_priority_message_already_waiting_goes_first(line, elsewhere):
    line.declare_queue("q")
    with Waiting(line, "s1") as waiting:
        elsewhere.publish("", "q", msg("high", priority=9))  # not heard here
        line.publish("", "q", msg("low", priority=1))
        assert bodies(waiting.answer()) == ["high"]
    assert leased_to(line, "low") is None


def test_an_older_message_of_equal_priority_goes_first(line, elsewhere):
    line.declare_queue("q")
    with Waiting(line, "s1") as waiting:
        elsewhere.publish("", "q", msg("older"))
        line.publish("", "q", msg("newer"))
        assert bodies(waiting.answer()) == ["older"]


def test_a_consume_without_room_is_not_handed_a_bigger_message(line):
    line.declare_queue("q")
    with Waiting(line, "small", max_slots=1, total_slots=4) as small:
        line.publish("", "q", msg("big", slots=2))
        assert leased_to(line, "big") is None
        assert line.waiters.offered("small")
        assert bodies(consume(line, "roomy", "q", max_slots=2)) == ["big"]
        with Waiting(line, "roomy", max_slots=2, total_slots=4) as roomy:
            line.publish("", "q", msg("big2", slots=2))
            [handed] = roomy.answer()  # passed over the consume without room
        assert handed.handed and bodies([handed]) == ["big2"]
    assert small.answer() == []  # ended by its session's wake-up, empty


def test_the_starvation_guard_holds_a_hand_off_back(sql, clock):
    """A big message this consumer could run once its slots free up has waited past the
    guard: no smaller one is handed to it from behind the big one."""
    line = _wired(sql.engine, clock, starvation_guard=5.0)
    elsewhere = Broker(SQL(sql.engine, clock=clock))
    line.declare_queue("q")
    with Waiting(line, "s1", max_slots=1, total_slots=4) as waiting:
        elsewhere.publish("", "q", msg("big", slots=4))  # not heard here
        clock.advance(10)
        line.publish("", "q", msg("small"))
        assert leased_to(line, "small") is None
    assert waiting.answer() == []


def test_a_message_handed_to_a_session_that_went_silent_is_redelivered(sql, clock):
    line = _wired(sql.engine, clock, lease_timeout=10.0)
    line.declare_queue("q")
    with Waiting(line, "s1") as waiting:
        line.publish("", "q", msg("a"))
        [delivery] = waiting.answer()
    assert delivery.handed
    clock.advance(11)  # s1 says nothing more
    with line.sql.transaction() as tx:
        assert line.expire(tx, clock())["leases_released"] == 1
    [again] = consume(line, "s2", "q")
    assert bodies([again]) == ["a"] and redelivered(again)
    assert line.ack("s1", [tag_of(delivery)]) == (0, [tag_of(delivery)])


def test_a_closed_session_is_not_handed_a_message(line, elsewhere):
    """Closed by another process meanwhile: the publish sees it closed (as a claim would)
    and leaves the message for others; the consume, woken, hears its session is closed."""
    line.declare_queue("q")
    with Waiting(line, "s1") as waiting:
        elsewhere.close_session("s1")
        line.publish("", "q", msg("a"))
        with pytest.raises(errors.SessionClosed):
            waiting.answer()
    assert bodies(consume(line, "s2", "q")) == ["a"]


def test_a_worker_credential_handed_a_task_is_granted_it(line):
    line.declare_queue("q")
    with Waiting(line, "s1", grantee="site-a") as waiting:
        line.publish("", "q", task("t1"))
        [delivery] = waiting.answer()
    assert delivery.handed
    assert line.grants.refused_keys("site-a", ["celery-task-meta-t1"], write=True) == []
    assert line.grants.refused_keys("site-b", ["celery-task-meta-t1"], write=True) != []


class PausedHistory(JobHistory):
    """The jobs history, holding the publishing transaction where it records the lease."""

    def __init__(self, sql) -> None:
        super().__init__(sql)
        self.inside = threading.Event()
        self.release = threading.Event()

    def claimed(self, *args, **kwargs) -> None:
        super().claimed(*args, **kwargs)
        self.inside.set()
        assert self.release.wait(30)


def test_a_consume_whose_wait_ends_during_a_hand_off_answers_with_the_message(sql):
    """Its wait ended (here: its session woken) while the publish that took it was still
    running: it waits for that publish to end and answers with the message leased to it,
    never empty while the message stays leased to its session."""
    history = PausedHistory(sql)
    line = _wired(sql.engine, history=history)
    line.declare_queue("q")
    with Waiting(line, "s1") as waiting:
        publish = threading.Thread(target=line.publish, args=("", "q", task("t1")))
        publish.start()
        assert history.inside.wait(10)
        line.waiters.wake_sessions(["s1"])
        wait_for(lambda: _running(waiting, "withdraw"), timeout=10,
                 message="the consume, its wait ended, waits for the publish")
        history.release.set()
        publish.join(10)
        [delivery] = waiting.answer()
    assert delivery.handed and leased_to(line, "t1") == "s1"


def _running(thread: threading.Thread, function: str) -> bool:
    """Whether ``thread`` is inside ``function`` now."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


class FailingGrants(TaskGrants):
    """The grants, failing after their write: the publishing transaction rolls back."""

    def record(self, *args, **kwargs) -> None:
        super().record(*args, **kwargs)
        raise RuntimeError("the grant could not be written")


def test_a_rolled_back_publish_hands_nothing(sql):
    """The publishing transaction fails after the lease: the consume goes on waiting."""
    line = _wired(sql.engine, grants=FailingGrants(sql))
    line.declare_queue("q")
    with Waiting(line, "s1", grantee="site-a") as waiting:
        with pytest.raises(RuntimeError):
            line.publish("", "q", task("t1"))
        assert depth(line, "q") == 0
        assert waiting.is_alive()
    assert waiting.answer() == []


def test_a_message_no_consumer_can_run_does_not_stop_hand_offs(line, elsewhere):
    """Only ready messages this consumer could run (within its total slots) go first."""
    line.declare_queue("q")
    with Waiting(line, "s1", max_slots=2, total_slots=2) as waiting:
        elsewhere.publish("", "q", msg("huge", slots=8))
        line.publish("", "q", msg("a"))
        [delivery] = waiting.answer()
    assert delivery.handed and bodies([delivery]) == ["a"]


def test_no_ack_queues_are_claimed_as_before(line):
    """Remote control and events (no_ack) are not handed off: the woken consume claims."""
    line.declare_queue("pidbox")
    waiting = threading.Thread(target=lambda: found.extend(line.consume(
        "s1", PRINCIPAL, [("pidbox", True)], wait=30)), daemon=True)
    found: list = []
    waiting.start()
    wait_for(lambda: "s1" in line.waiters.waiting_sessions(), timeout=10,
             message="the consume waits")
    assert not line.waiters.offered("s1")
    line.publish("", "pidbox", msg("ping"))
    waiting.join(10)
    assert bodies(found) == ["ping"] and not found[0].handed


def test_a_pool_slots_header_is_kept_on_the_handed_message(line):
    line.declare_queue("q")
    with Waiting(line, "s1", max_slots=3, total_slots=3) as waiting:
        line.publish("", "q", msg("a", slots=3))
        [delivery] = waiting.answer()
    assert delivery.handed and delivery.message["headers"][HEADER_POOL_SLOTS] == 3
