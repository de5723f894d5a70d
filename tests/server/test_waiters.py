"""The in-process waiter registry: a new message wakes one waiter it fits, not all."""

from __future__ import annotations

from contextlib import ExitStack

from edge_kombu.server.wakeup import LocalWakeup, WaiterRegistry


def _waiting(registry: WaiterRegistry, stack: ExitStack, count: int, max_slots=None) -> list:
    return [stack.enter_context(registry.waiting(["q"], f"s{i}-{max_slots}", max_slots))
            for i in range(count)]


def test_a_published_message_wakes_one_waiter_per_message():
    registry = WaiterRegistry()
    wakeup = LocalWakeup(registry)
    with ExitStack() as stack:
        waiters = _waiting(registry, stack, 5)
        wakeup.after_commit({"q"}, set(), fresh={"q": (1, 1)})
        assert sum(w.event.is_set() for w in waiters) == 1
        wakeup.after_commit({"q"}, set(), fresh={"q": (2, 1)})
        assert sum(w.event.is_set() for w in waiters) == 3  # already woken ones do not count


def test_only_waiters_the_message_fits_are_woken():
    registry = WaiterRegistry()
    with ExitStack() as stack:
        small = _waiting(registry, stack, 3, max_slots=1)
        big = _waiting(registry, stack, 1, max_slots=4)
        LocalWakeup(registry).after_commit({"q"}, set(), fresh={"q": (1, 3)})
        assert [w.event.is_set() for w in small + big] == [False, False, False, True]


def test_other_changes_still_wake_every_waiter():
    """A requeue (no ``fresh`` count) may free messages several waiters want."""
    registry = WaiterRegistry()
    with ExitStack() as stack:
        waiters = _waiting(registry, stack, 4)
        LocalWakeup(registry).after_commit({"q"}, set())
        assert all(w.event.is_set() for w in waiters)


def test_a_session_wake_up_before_its_consume_is_kept_for_it():
    """An ack can reach the server before the consume its worker sent just before it."""
    registry = WaiterRegistry()
    registry.wake_sessions(["s1"])
    with registry.waiting(["q"], "s1", 1) as first:
        assert first.by_session
    with registry.waiting(["q"], "s1", 1) as second:
        assert not second.by_session  # used up by the first
    with registry.waiting(["q"], "s2", 1) as other:
        assert not other.by_session
