"""Waking long-polls: the in-process waiter registry and the cross-process signal.

A consume that finds nothing registers a :class:`Waiter` and sleeps on it without
holding a database connection. It is woken

* at once by a publish, requeue or ack handled in the same process;
* from other processes on PostgreSQL by ``LISTEN``/``NOTIFY`` (sent inside the
  publishing transaction, so it arrives exactly when the rows are visible), one waiter
  per new message there too;
* on other databases by one poll per process every ``poll_interval`` seconds that
  asks which of the queues waited on hold a message that fits a waiter.

A consume that found nothing for itself can also be *handed* a message: it offers to
take one (an :class:`Offer`), a publish in this process reserves it
(:meth:`WaiterRegistry.reserve`), leases the message to its session in the publishing
transaction and, once that committed, wakes it with the delivery
(:meth:`WaiterRegistry.resolve`): no claim transaction of its own.

Works under threads and under gevent (whose monkey-patching makes the
``threading`` primitives cooperative).
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_kombu.server.sql import NOTIFY_CHANNEL, Wakeup

if TYPE_CHECKING:
    from edge_kombu.server.broker import Broker

log = logging.getLogger(__name__)

_NOTIFY_LIMIT = 7000  # PostgreSQL caps a NOTIFY payload at 8000 bytes


@dataclass(frozen=True)
class Offer:
    """What a waiting consume may be handed: one message of its acknowledged ``queues``
    that fits ``max_slots``; ``total_slots`` and ``grantee`` as its claims have them."""

    queues: frozenset[str]
    max_slots: int | None
    total_slots: int | None
    grantee: str | None

    def takes(self, queue: str, slots: int) -> bool:
        return queue in self.queues and (self.max_slots is None or slots <= self.max_slots)


class Waiter:
    """One waiting consume: what it waits for and the event that wakes it."""

    __slots__ = ("queues", "session", "max_slots", "event", "by_session", "nudged",
                 "offer", "pending", "handed")

    def __init__(self, queues: frozenset[str], session: str, max_slots: int | None) -> None:
        self.queues = queues
        self.session = session
        self.max_slots = max_slots
        self.event = threading.Event()
        self.by_session = False
        #: Woken for messages to claim (not only handed one).
        self.nudged = False
        #: Open to be handed a message (while it waits, having found nothing).
        self.offer: Offer | None = None
        #: Set once the publish that reserved this waiter ended (None: none did).
        self.pending: threading.Event | None = None
        #: What that publish leased to it, once committed.
        self.handed: list = []

    def fits(self, min_slots: int | None) -> bool:
        return min_slots is None or self.max_slots is None or min_slots <= self.max_slots

    def wait(self, timeout: float) -> bool:
        return self.event.wait(timeout)


class WaiterRegistry:
    """The consumes waiting in this process, by queue and by session."""

    #: Seconds a session wake-up that found no waiting consume is kept for the next one.
    PENDING_SESSION_WAKE = 5.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_queue: dict[str, set[Waiter]] = defaultdict(set)
        self._by_session: dict[str, set[Waiter]] = defaultdict(set)
        # An ack can overtake the consume its worker sent just before (two connections):
        # that consume asked with the capacity of before the ack, so it must not wait.
        self._pending_wakes: dict[str, float] = {}
        # What this process heard: a queue's count moves with every wake-up for it (a
        # message may have become claimable), the epoch when it may have missed some.
        self._versions: dict[str, int] = {}
        self._epoch = 0
        self.closed = False

    def close(self) -> None:
        """The server is stopping: answer every waiting consume now, and wait no more."""
        self.closed = True
        self.wake_all()

    @contextmanager
    def waiting(
        self, queues: Iterable[str], session: str, max_slots: int | None
    ) -> Iterator[Waiter]:
        waiter = Waiter(frozenset(queues), session, max_slots)
        if self.closed:
            waiter.event.set()
        with self._lock:
            woken_at = self._pending_wakes.pop(session, None)
            if woken_at is not None and time.monotonic() - woken_at < self.PENDING_SESSION_WAKE:
                waiter.by_session = True
            for queue in waiter.queues:
                self._by_queue[queue].add(waiter)
            self._by_session[session].add(waiter)
        try:
            yield waiter
        finally:
            with self._lock:
                for queue in waiter.queues:
                    self._discard(self._by_queue, queue, waiter)
                self._discard(self._by_session, session, waiter)

    def heard(self, queues: Iterable[str]) -> tuple:
        """What this process has heard of ``queues`` so far: equal snapshots mean that no
        message became claimable on them since (as far as this process can know)."""
        with self._lock:
            return self._epoch, tuple(self._versions.get(queue, 0) for queue in queues)

    def _moved(self, queues: Iterable[str]) -> None:  # under the lock
        if len(self._versions) > 100_000:
            self._versions.clear()
            self._epoch += 1
        for queue in queues:
            self._versions[queue] = self._versions.get(queue, 0) + 1

    @staticmethod
    def _discard(index: dict, key: str, waiter: Waiter) -> None:
        waiters = index.get(key)
        if waiters is not None:
            waiters.discard(waiter)
            if not waiters:
                del index[key]

    def wake_queues(self, queues: Iterable[str], min_slots: dict[str, int] | None = None) -> int:
        """Wake waiters on ``queues`` (only those a message fits, if ``min_slots`` given)."""
        woken = 0
        queues = list(queues)
        with self._lock:
            self._moved(queues)
            for queue in queues:
                need = None if min_slots is None else min_slots.get(queue)
                for waiter in self._by_queue.get(queue, ()):
                    if waiter.fits(need) and not waiter.event.is_set():
                        waiter.nudged = True
                        waiter.event.set()
                        woken += 1
        return woken

    def wake_some(self, fresh: dict[str, tuple[int, int]]) -> None:
        """Wake one waiter a message fits per new message (queue → (messages, fewest slots)).

        Waking every waiter on a queue for each message makes N consumers race for it:
        N claim transactions per message with N workers on one queue.
        """
        with self._lock:
            self._moved(fresh)
            for queue, (count, min_slots) in fresh.items():
                for waiter in self._by_queue.get(queue, ()):
                    if count <= 0:
                        break
                    if waiter.fits(min_slots) and not waiter.event.is_set():
                        waiter.nudged = True
                        waiter.event.set()
                        count -= 1

    # -- hand-off ---------------------------------------------------------------------------

    def offer(self, waiter: Waiter, offer: Offer) -> None:
        """``waiter`` found nothing and is about to wait: it may be handed a message."""
        with self._lock:
            if not waiter.event.is_set():
                waiter.offer = offer

    def reserve(self, queue: str, slots: int) -> tuple[Waiter, Offer] | None:
        """A waiter open to be handed a message of ``queue`` weighing ``slots``, taken out
        of the offers until :meth:`resolve` (its consume cannot end before that)."""
        with self._lock:
            for waiter in self._by_queue.get(queue, ()):
                offer = waiter.offer
                if offer is not None and not waiter.event.is_set() and offer.takes(queue, slots):
                    waiter.offer = None
                    waiter.pending = threading.Event()
                    return waiter, offer
        return None

    def resolve(self, waiter: Waiter, handed: list) -> None:
        """The publish that reserved ``waiter`` ended: wake it with ``handed`` (leased to
        its session in a committed transaction), or let it go on waiting (empty)."""
        with self._lock:
            pending, waiter.pending = waiter.pending, None
            if handed:
                waiter.handed = handed
                waiter.event.set()
        if pending is not None:
            pending.set()
        if handed:
            # Let the consume answer before the publish does (under gevent, a switch to it):
            # the task starts sooner; the publisher waits the length of one answer.
            time.sleep(0)

    def offered(self, session: str) -> bool:
        """Whether a consume of ``session`` waits here open to be handed a message."""
        with self._lock:
            return any(w.offer is not None for w in self._by_session.get(session, ()))

    def withdraw(self, waiter: Waiter) -> list:
        """``waiter`` stops waiting (for now): no more hand-offs; returns what it was handed,
        after the publish that reserved it, if any, ended."""
        with self._lock:
            waiter.offer = None
            pending = waiter.pending
        if pending is not None:
            pending.wait()
        with self._lock:
            handed, waiter.handed = waiter.handed, []
        return handed

    def wake_sessions(self, sessions: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for session in sessions:
                waiters = self._by_session.get(session)
                if not waiters:
                    self._pending_wakes[session] = now
                for waiter in waiters or ():
                    waiter.by_session = True
                    waiter.event.set()
            if len(self._pending_wakes) > 10_000:
                self._pending_wakes = {s: t for s, t in self._pending_wakes.items()
                                       if now - t < self.PENDING_SESSION_WAKE}

    def recheck_all(self) -> None:
        """A credential changed: wake every waiting consume to check its caller's again
        (and claim again); unlike :meth:`wake_all`, none answers for that alone."""
        with self._lock:
            for waiters in self._by_session.values():
                for waiter in waiters:
                    waiter.event.set()

    def wake_all(self) -> None:
        with self._lock:
            self._epoch += 1  # the PostgreSQL listener was deaf, the server stops
            for waiters in self._by_session.values():
                for waiter in waiters:
                    waiter.by_session = True
                    waiter.event.set()

    def waiting_sessions(self) -> list[str]:
        with self._lock:
            return list(self._by_session)

    def waited_queues(self) -> set[str]:
        with self._lock:
            return set(self._by_queue)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(w) for w in self._by_session.values())


class LocalWakeup(Wakeup):
    """Wakes this process's waiters once a transaction committed."""

    def __init__(self, registry: WaiterRegistry) -> None:
        self.registry = registry

    def after_commit(self, queues: set[str], sessions: set[str],
                     fresh: dict[str, tuple[int, int]] | None = None) -> None:
        fresh = fresh or {}
        if fresh:
            self.registry.wake_some(fresh)
        if queues - fresh.keys():
            self.registry.wake_queues(queues - fresh.keys())
        if sessions:
            self.registry.wake_sessions(sessions)


class PostgresWakeup(LocalWakeup):
    """Also tells every other API process, through ``NOTIFY`` in the same transaction.

    Each notification starts with ``p:<origin>``: this process's listener skips its own,
    whose waiters :meth:`after_commit` woke already (one per new message, not all).
    Items: ``q:<queue>`` (look again), ``s:<session>`` (answer), and for a queue that only
    got new messages ``f:<count>:<fewest slots>:<queue>`` besides its ``q:``, so that the
    other processes too wake one waiter per message rather than every waiter on the queue
    (with 3,000 workers on one queue over two processes, waking all made each publish cost
    the other process some 1,500 claim transactions). A listener that does not know ``f:``
    ignores it and wakes all, as before.
    """

    def __init__(self, registry: WaiterRegistry) -> None:
        super().__init__(registry)
        self.origin = f"p:{os.getpid()}.{uuid.uuid4().hex[:8]}"

    def in_transaction(self, conn, queues: set[str], sessions: set[str],
                       fresh: dict[str, tuple[int, int]] | None = None) -> None:
        items = [f"q:{q}" for q in sorted(queues)] + [f"s:{s}" for s in sorted(sessions)]
        items += [f"f:{count}:{slots}:{q}" for q, (count, slots) in sorted((fresh or {}).items())
                  if q in queues]
        for payload in _chunks(items, _NOTIFY_LIMIT - len(self.origin) - 1):
            conn.exec_driver_sql("SELECT pg_notify(%(channel)s, %(payload)s)",
                                 {"channel": NOTIFY_CHANNEL,
                                  "payload": f"{self.origin}\n{payload}"})


def _chunks(items: list[str], limit: int) -> Iterator[str]:
    batch: list[str] = []
    size = 0
    for item in items:
        if batch and size + len(item.encode()) + 1 > limit:
            yield "\n".join(batch)
            batch, size = [], 0
        batch.append(item)
        size += len(item.encode()) + 1
    if batch:
        yield "\n".join(batch)


class Heard:
    """What a batch of notifications from other processes asks of this one."""

    def __init__(self) -> None:
        self.queues: set[str] = set()  # every waiter looks again
        self.fresh: dict[str, tuple[int, int]] = {}  # one waiter per new message
        self.sessions: set[str] = set()
        self.credentials = False

    def add(self, items: list[str]) -> None:
        """One notification's items (see :class:`PostgresWakeup`)."""
        queues: set[str] = set()
        fresh: dict[str, tuple[int, int]] = {}
        for item in items:
            kind, _, name = item.partition(":")
            if kind == "q":
                queues.add(name)
            elif kind == "s":
                self.sessions.add(name)
            elif kind == "c":
                self.credentials = True
            elif kind == "f":
                count, slots, queue = name.split(":", 2)
                fresh[queue] = (int(count), int(slots))
        self.queues |= queues - fresh.keys()
        for queue, (count, slots) in fresh.items():
            was = self.fresh.get(queue, (0, slots))
            self.fresh[queue] = (was[0] + count, min(was[1], slots))

    def wake(self, registry: WaiterRegistry) -> None:
        if self.queues:
            registry.wake_queues(self.queues)
        fresh = {q: v for q, v in self.fresh.items() if q not in self.queues}
        if fresh:
            registry.wake_some(fresh)
        if self.sessions:
            registry.wake_sessions(self.sessions)


class ReadyPoller:
    """For databases without NOTIFY: wake waiters whose queues got a message elsewhere.

    Its :meth:`poll` runs every ``wake_poll_interval`` seconds on a thread of its own.
    """

    def __init__(self, broker: Broker, registry: WaiterRegistry) -> None:
        self.broker = broker
        self.registry = registry

    def poll(self) -> None:
        queues = self.registry.waited_queues()
        if queues:
            ready = self.broker.ready_min_slots(queues)
            if ready:
                self.registry.wake_queues(ready, ready)


class PostgresListener(threading.Thread):
    """``LISTEN`` on a dedicated connection and wake local waiters on each notification.

    ``on_credentials`` is called when a credential changed (item ``c:``, sent by any
    process: see :mod:`~edge_kombu.server.credential_cache`), and before each (re)start of
    listening, since changes made while it was deaf went unheard.
    """

    def __init__(self, engine, registry: WaiterRegistry, *, retry_interval: float = 1.0,
                 origin: str | None = None,
                 on_credentials: Callable[[], None] | None = None) -> None:
        super().__init__(name="edge-kombu-pg-listener", daemon=True)
        self.engine = engine
        self.registry = registry
        self.origin = origin  # notifications this process sent itself: already handled
        self.on_credentials = on_credentials or (lambda: None)
        self.retry_interval = retry_interval
        self.stopped = threading.Event()
        self.listening = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._listen()
            except Exception:  # noqa: BLE001 - reconnect after any DB failure
                log.exception("PostgreSQL listener lost its connection; reconnecting")
            self.listening.clear()
            # Anything published while we were deaf must not wait for a timeout.
            self.registry.wake_all()
            self.stopped.wait(self.retry_interval)

    def _listen(self) -> None:
        raw = self.engine.raw_connection()
        conn = raw.driver_connection  # read before detach(), which drops the pool's record
        raw.detach()
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self.on_credentials()
            self.listening.set()
            # Consumes that started waiting before we listened may have missed a NOTIFY.
            self.registry.wake_all()
            while not self.stopped.is_set():
                readable, _, _ = select.select([conn], [], [], 5.0)
                if not readable:
                    continue
                conn.poll()
                heard = Heard()
                while conn.notifies:
                    items = conn.notifies.pop(0).payload.split("\n")
                    if items[0] != self.origin:
                        heard.add(items)
                if heard.credentials:
                    self.on_credentials()
                heard.wake(self.registry)
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
