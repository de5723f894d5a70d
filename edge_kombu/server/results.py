"""Task results: the key/value store behind Celery's ``edge+https://`` result backend.

Values are bytes under a key, optionally expiring; ``incr`` is atomic (chords count
their finished parts with it). Expired values read as absent and are deleted by
housekeeping. A stored value is reported to a :class:`ResultHistory` (the jobs history
reads a Celery task's state from it) in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Protocol

from sqlalchemy import delete, or_, select, update
from sqlalchemy.engine import Connection

from edge_kombu import errors
from edge_kombu.server import models as m
from edge_kombu.server.sql import SQL


def _is_success(value: bytes | None) -> bool:
    """Whether ``value`` is a Celery result (JSON) in the SUCCESS state."""
    if not value or b"SUCCESS" not in value or not value.lstrip().startswith(b"{"):
        return False
    try:
        meta = json.loads(value)
    except ValueError:
        return False
    return isinstance(meta, dict) and meta.get("status") == "SUCCESS"


class ResultHistory(Protocol):
    """Told of every stored result, inside the transaction that stores it."""

    def result_stored(self, conn: Connection, key: str, value: bytes, now: float) -> None: ...


class Results:
    """Get, set, count and expire results; each method is one transaction of ``sql``."""

    def __init__(self, sql: SQL, *, history: ResultHistory | None = None) -> None:
        self.sql = sql
        self.history = history

    def _live(self, now: float):
        return or_(m.result.c.expires_at.is_(None), m.result.c.expires_at > now)

    def get(self, key: str) -> bytes | None:
        return self.mget([key])[0]

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        """The values of ``keys`` in their order, None where absent or expired."""
        if not keys:
            return []
        now = self.sql.clock()
        with self.sql.connect() as conn:
            found = dict(
                conn.execute(
                    select(m.result.c.key, m.result.c.value).where(
                        m.result.c.key.in_(set(keys)), self._live(now)
                    )
                ).all()
            )
        return [found.get(k) for k in keys]

    def set(self, key: str, value: bytes, *, expires: float | None = None,
            keep_success: bool = False) -> bool:
        """Store ``value``, expiring ``expires`` seconds from now (None: never); with
        ``keep_success``, not over a live Celery result whose status is SUCCESS. Returns
        whether it was stored."""
        with self.sql.transaction() as tx:
            now = self.sql.clock()
            if keep_success and _is_success(self.read(tx.conn, key, now)):
                return False
            self.store(tx.conn, key, value, now, expires=expires)
            return True

    def store(self, conn: Connection, key: str, value: bytes, now: float, *,
              expires: float | None = None) -> None:
        """On ``conn`` (the caller's transaction): :meth:`set`."""
        row = {
            "key": key,
            "value": value,
            "updated_at": now,
            "expires_at": None if expires is None else now + expires,
        }
        self.sql.upsert(conn, m.result, row, ["key"])
        if self.history is not None:
            self.history.result_stored(conn, key, value, now)

    def read(self, conn: Connection, key: str, now: float) -> bytes | None:
        """On ``conn`` (the caller's transaction): the live value of ``key``, locked until
        commit so that a decision made on it holds."""
        value = conn.execute(self.sql.lock_rows(
            select(m.result.c.value).where(m.result.c.key == key, self._live(now))
        )).scalar()
        return None if value is None else bytes(value)

    def delete(self, key: str) -> None:
        with self.sql.transaction() as tx:
            tx.conn.execute(delete(m.result).where(m.result.c.key == key))

    def incr(self, key: str, amount: int = 1, *, expires: float | None = None) -> int:
        """Add ``amount`` to the integer stored at ``key`` (0 if absent), atomically."""
        now = self.sql.clock()
        with self.sql.transaction() as tx:
            conn = tx.conn
            # Create the counter or lock it (see SQL.upsert: INSERT IGNORE deadlocks on MySQL).
            self.sql.upsert(
                conn,
                m.result,
                {"key": key, "value": b"0", "updated_at": now, "expires_at": None},
                ["key"],
                {"value": m.result.c.value},
            )
            current, expires_at = conn.execute(self.sql.lock_rows(
                select(m.result.c.value, m.result.c.expires_at).where(m.result.c.key == key)
            )).one()
            if expires_at is not None and expires_at <= now:
                current = b"0"
            try:
                value = int(bytes(current).decode()) + amount
            except ValueError:
                raise errors.Conflict(f"result {key!r} does not hold an integer") from None
            conn.execute(
                update(m.result)
                .where(m.result.c.key == key)
                .values(
                    value=str(value).encode(),
                    updated_at=now,
                    expires_at=None if expires is None else now + expires,
                )
            )
            return value

    def expire(self, key: str, expires: float | None) -> bool:
        """Let ``key`` expire ``expires`` seconds from now (None: keep it); False if absent."""
        now = self.sql.clock()
        with self.sql.transaction() as tx:
            return bool(
                tx.conn.execute(
                    update(m.result)
                    .where(m.result.c.key == key)
                    .values(expires_at=None if expires is None else now + expires)
                ).rowcount
            )

    def delete_expired(self, conn: Connection, now: float) -> int:
        """On ``conn`` (housekeeping's transaction): delete expired results; returns how many."""
        return conn.execute(delete(m.result).where(m.result.c.expires_at < now)).rowcount
