"""What one API process remembers of the credentials, and how it learns they changed.

Authenticating a request would otherwise read the token table every time. Each entry is
kept with the *stamp* it was read under; a :class:`Freshness` gives the current stamp,
which changes whenever any credential may have changed, so a revocation made anywhere
takes effect on the next request in every process.

:class:`CountedFreshness` reads the credentials' generation, a random value each change
rewrites in its transaction (``edge_kombu_generation``): one tiny read per lookup, a few
microseconds on SQLite (:meth:`~edge_kombu.server.sql.SQL.quick_scalar`), one round trip
elsewhere. (A ``NOTIFY`` alone would not do: it can reach a process after the next
request.) The change's transaction also sends ``NOTIFY`` (PostgreSQL), on which the
listener wakes the waiting long-polls to check their credential; elsewhere a
:class:`ChangeWatch` polls the generation for them.

A stamp is read *before* the database, so an entry read while a change commits is kept
under the old stamp and never used.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Hashable
from typing import Protocol

from sqlalchemy.engine import Connection

from edge_kombu.server import models as m
from edge_kombu.server.sql import SQL

#: The generation (row of ``edge_kombu_generation``) of the credentials.
GENERATION = "credentials"
#: The ``NOTIFY`` item that says the credentials changed (see wakeup.PostgresListener).
CHANGED_ITEM = "c:credentials"
_READ = f"SELECT value FROM {m.generation.name} WHERE name = '{GENERATION}'"


def note_change(sql: SQL, conn: Connection) -> None:
    """In the transaction that changes a credential: give the credentials a new
    generation and (PostgreSQL) tell every listening process at commit."""
    sql.upsert(conn, m.generation, {"name": GENERATION, "value": secrets.token_hex(16)},
               ["name"])
    sql.notify(conn, CHANGED_ITEM)


class Freshness(Protocol):
    def stamp(self) -> Hashable | None:
        """A value that changes whenever a credential may have; None: trust no cache now."""

    def changed(self) -> None:
        """This process changed a credential (committed): move the stamp now."""


class CountedFreshness:
    """The stamp is the credentials' generation, read from the database each time."""

    def __init__(self, sql: SQL) -> None:
        self.sql = sql

    def stamp(self) -> Hashable | None:
        return ("generation", self.sql.quick_scalar(_READ))

    def changed(self) -> None:
        """Nothing to do: the change's transaction rewrote the generation."""


class ChangeWatch:
    """Where no listener hears of changes: :meth:`poll` (on a timer) calls ``on_change``
    when the stamp moved since the last poll (waiting long-polls check their credential)."""

    def __init__(self, freshness: Freshness, on_change: Callable[[], None]) -> None:
        self.freshness = freshness
        self.on_change = on_change
        self._last = self._first = object()

    def poll(self) -> None:
        stamp = self.freshness.stamp()
        if stamp != self._last:
            moved = self._last is not self._first
            self._last = stamp
            if moved:
                self.on_change()


class CredentialCache:
    """Entries by key, each valid while the stamp it was read under is current."""

    def __init__(self, freshness: Freshness, *, capacity: int = 10_000) -> None:
        self.freshness = freshness
        self.capacity = capacity
        self._lock = threading.Lock()
        self._entries: dict[Hashable, tuple[Hashable, object]] = {}

    def get(self, key: Hashable, read: Callable[[], object]) -> object:
        """The entry of ``key``, from memory if still fresh, else ``read()`` (a missing
        entry, None, is not remembered)."""
        stamp = self.freshness.stamp()
        if stamp is not None:
            with self._lock:
                cached = self._entries.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        value = read()
        if stamp is not None and value is not None:
            with self._lock:
                if len(self._entries) >= self.capacity:
                    self._entries.clear()
                self._entries[key] = (stamp, value)
        return value

    def changed(self) -> None:
        """This process committed a change to a credential."""
        self.freshness.changed()
        with self._lock:
            self._entries.clear()
