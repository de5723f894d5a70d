"""The broker's state in the database: routing, messages and leases, sessions, results, tokens.

Flask-free: every method is one transaction on a SQLAlchemy engine, so the store is
tested directly against SQLite, PostgreSQL and MySQL/MariaDB. Claims lock with
``FOR UPDATE SKIP LOCKED`` where the database has it; SQLite serialises writers
with ``BEGIN IMMEDIATE`` (see :mod:`edge_kombu.server.db`).

Whenever messages become available (publish, requeue, expired lease) or a
session's capacity changes (ack), the store tells its :class:`Wakeup`, inside the
transaction (so PostgreSQL can ``NOTIFY`` on commit) and after the commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import case, delete, func, or_, select, update
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from edge_kombu import errors
from edge_kombu.protocol import pool_slots
from edge_kombu.server import models as m
from edge_kombu.server.jobs import JobHistory
from edge_kombu.server.routing import binding_id, route

log = logging.getLogger(__name__)

#: Prefix of per-worker API tokens (makes leaked tokens easy to recognise).
TOKEN_PREFIX = "ekt_"
MAX_PRIORITY = 255


class Wakeup:
    """Receives the store's signals that consumers may have something to do."""

    def in_transaction(self, conn: Connection, queues: set[str], sessions: set[str]) -> None:
        """Called inside the transaction that made messages available."""

    def after_commit(self, queues: set[str], sessions: set[str],
                     fresh: dict[str, tuple[int, int]] | None = None) -> None:
        """Called once that transaction committed.

        ``fresh``: of ``queues``, those that just got new messages, as queue →
        (how many, fewest slots): one waiting consumer per message will do.
        """


@dataclass(frozen=True)
class Delivery:
    queue: str
    message: dict


@dataclass(frozen=True)
class QueueInfo:
    name: str
    messages: int
    consumers: int


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _positive_ms(arguments: dict, key: str) -> int | None:
    value = arguments.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise errors.InvalidRequest(
            f"arguments.{key} must be a positive number of milliseconds, got {value!r}"
        )
    return int(value)


def message_slots(message: dict) -> int:
    """The task's weight in worker slots from the ``pool_slots`` header (default 1)."""
    try:
        return pool_slots(message.get("headers"))
    except ValueError as exc:
        raise errors.InvalidRequest(f"message.{exc}") from None


def message_priority(message: dict) -> int:
    priority = (message.get("properties") or {}).get("priority") or 0
    if isinstance(priority, bool) or not isinstance(priority, int) or priority < 0:
        raise errors.InvalidRequest(
            f"message.properties.priority must be an integer from 0 to {MAX_PRIORITY}, "
            f"got {priority!r}"
        )
    return min(priority, MAX_PRIORITY)


def message_expiration(message: dict) -> float | None:
    """Per-message TTL in seconds from AMQP's ``expiration`` property (milliseconds)."""
    value = (message.get("properties") or {}).get("expiration")
    if value is None:
        return None
    try:
        ms = float(value)
    except (TypeError, ValueError):
        ms = -1
    if ms < 0:
        raise errors.InvalidRequest(
            f"message.properties.expiration must be a number of milliseconds >= 0, got {value!r}"
        )
    return ms / 1000.0


def _parse_tag(tag: str) -> tuple[int, str] | None:
    ident, _, nonce = tag.partition(".")
    if not ident.isdigit() or not nonce:
        return None
    return int(ident), nonce


class Store:
    """All broker operations, each one database transaction."""

    def __init__(
        self,
        engine: Engine,
        *,
        lease_timeout: float = 30.0,
        starvation_guard: float = 2.0,
        wakeup: Wakeup | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if lease_timeout <= 0:
            raise ValueError("lease_timeout must be > 0 seconds")
        self.engine = engine
        self.lease_timeout = lease_timeout
        self.starvation_guard = starvation_guard
        self.wakeup = wakeup or Wakeup()
        self.clock = clock
        self.dialect = engine.dialect.name
        self._skip_locked = self.dialect in ("postgresql", "mysql", "mariadb")
        self.jobs = JobHistory(self)

    # -- plumbing ---------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        tx = _Tx()
        with self.engine.begin() as conn:
            tx.conn = conn
            yield tx
            if tx.queues or tx.sessions:
                self.wakeup.in_transaction(conn, tx.queues, tx.sessions)
        if tx.queues or tx.sessions:
            self.wakeup.after_commit(tx.queues, tx.sessions, fresh=tx.fresh)

    def _insert_ignore(self, conn: Connection, table, rows: list[dict]) -> int:
        if not rows:
            return 0
        if self.dialect == "postgresql":
            stmt = pg_insert(table).on_conflict_do_nothing()
        elif self.dialect == "sqlite":
            stmt = sqlite_insert(table).on_conflict_do_nothing()
        else:
            stmt = table.insert().prefix_with("IGNORE")
        return conn.execute(stmt, rows).rowcount

    def _upsert(
        self, conn: Connection, table, row: dict, keys: Sequence[str], changes: dict | None = None
    ) -> None:
        """Insert ``row``, or apply ``changes`` (default: the row's other columns) to it.

        Unlike ``INSERT IGNORE`` followed by a locking read or an ``UPDATE``, this locks an
        existing row exclusively at once: on MySQL the duplicate-key check of
        ``INSERT IGNORE`` takes a shared lock, and two transactions upgrading theirs deadlock.
        """
        if changes is None:
            changes = {k: v for k, v in row.items() if k not in keys}
        if self.dialect == "postgresql":
            stmt = pg_insert(table).values(row).on_conflict_do_update(
                index_elements=keys, set_=changes
            )
        elif self.dialect == "sqlite":
            stmt = sqlite_insert(table).values(row).on_conflict_do_update(
                index_elements=keys, set_=changes
            )
        else:
            stmt = mysql_insert(table).values(row).on_duplicate_key_update(**changes)
        conn.execute(stmt)

    def _lock_row(self, stmt):
        """Lock the selected rows until commit (SQLite's BEGIN IMMEDIATE does already)."""
        return stmt if self.dialect == "sqlite" else stmt.with_for_update()

    def _lock(self, stmt):
        return stmt.with_for_update(skip_locked=True) if self._skip_locked else stmt

    # -- exchanges, queues, bindings ----------------------------------------------------

    def declare_exchange(
        self,
        name: str,
        type: str = "direct",
        *,
        durable: bool = True,
        auto_delete: bool = False,
        arguments: dict | None = None,
        passive: bool = False,
    ) -> None:
        if not name:
            return  # the default exchange always exists
        with self._tx() as tx:
            existing = tx.conn.execute(
                select(m.exchange.c.type).where(m.exchange.c.name == name)
            ).scalar()
            if passive:
                if existing is None:
                    raise errors.NotFound(f"exchange {name!r} does not exist")
                return
            if existing is not None and existing != type:
                raise errors.Conflict(
                    f"exchange {name!r} exists with type {existing!r}, cannot redeclare as {type!r}"
                )
            self._insert_ignore(
                tx.conn,
                m.exchange,
                [
                    {
                        "name": name,
                        "type": type,
                        "durable": durable,
                        "auto_delete": auto_delete,
                        "arguments": json.dumps(arguments or {}),
                    }
                ],
            )

    def delete_exchange(self, name: str) -> None:
        with self._tx() as tx:
            tx.conn.execute(delete(m.binding).where(m.binding.c.exchange == name))
            tx.conn.execute(delete(m.exchange).where(m.exchange.c.name == name))

    def declare_queue(
        self,
        name: str,
        *,
        durable: bool = True,
        auto_delete: bool = False,
        exclusive: bool = False,
        arguments: dict | None = None,
        passive: bool = False,
    ) -> QueueInfo:
        arguments = arguments or {}
        expires_ms = _positive_ms(arguments, "x-expires")
        ttl_ms = arguments.get("x-message-ttl")
        if ttl_ms is not None and (
            isinstance(ttl_ms, bool) or not isinstance(ttl_ms, (int, float)) or ttl_ms < 0
        ):
            raise errors.InvalidRequest(
                f"arguments.x-message-ttl must be a number of milliseconds >= 0, got {ttl_ms!r}"
            )
        now = self.clock()
        with self._tx() as tx:
            if passive:
                exists = tx.conn.execute(
                    select(m.queue.c.name).where(m.queue.c.name == name)
                ).scalar()
                if exists is None:
                    raise errors.NotFound(f"queue {name!r} does not exist")
            else:
                self._create_queue(
                    tx.conn,
                    name,
                    durable=durable,
                    auto_delete=auto_delete,
                    exclusive=exclusive,
                    expires_ms=expires_ms,
                    message_ttl_ms=None if ttl_ms is None else int(ttl_ms),
                    now=now,
                    touch=True,
                )
            return QueueInfo(name, self._depth(tx.conn, name), self._consumers(tx.conn, name, now))

    def _create_queue(
        self, conn: Connection, name: str, *, now: float, touch: bool = False, **columns
    ) -> None:
        """Create queue ``name`` unless it exists; ``touch`` marks an existing one used."""
        row = {"durable": True, "auto_delete": False, "exclusive": False}
        row.update(columns)
        row.update(name=name, created_at=now, last_used_at=now)
        if touch:
            self._upsert(conn, m.queue, row, ["name"], {"last_used_at": now})
        else:
            self._insert_ignore(conn, m.queue, [row])

    def _depth(self, conn: Connection, name: str) -> int:
        return conn.execute(
            select(func.count())
            .select_from(m.message)
            .where(m.message.c.queue == name, m.message.c.session.is_(None))
        ).scalar_one()

    def _consumers(self, conn: Connection, name: str, now: float) -> int:
        return conn.execute(
            select(func.count())
            .select_from(m.consumer.join(m.session, m.session.c.id == m.consumer.c.session))
            .where(m.consumer.c.queue == name, *self._live_session(now))
        ).scalar_one()

    def _live_session(self, now: float):
        return (m.session.c.closed_at.is_(None), m.session.c.last_seen >= now - self.lease_timeout)

    def queue_overview(self) -> list[dict]:
        """Every queue: ready and leased messages, oldest ready age, largest slots asked."""
        now = self.clock()
        msg = m.message.c
        live = or_(msg.expires_at.is_(None), msg.expires_at > now)
        # Age and size of the messages that wait, not of those already running.
        waiting = msg.session.is_(None)
        with self.engine.connect() as conn:
            names = list(conn.execute(select(m.queue.c.name).order_by(m.queue.c.name)).scalars())
            stats = {
                row.queue: row
                for row in conn.execute(
                    select(
                        msg.queue,
                        func.count().label("messages"),
                        func.count(msg.session).label("leased"),
                        func.min(case((waiting, msg.published_at))).label("oldest"),
                        func.max(case((waiting, msg.slots))).label("max_slots"),
                    )
                    .where(live)
                    .group_by(msg.queue)
                ).all()
            }
            consumers = dict(
                conn.execute(
                    select(m.consumer.c.queue, func.count())
                    .join(m.session, m.session.c.id == m.consumer.c.session)
                    .where(*self._live_session(now))
                    .group_by(m.consumer.c.queue)
                ).all()
            )
        overview = []
        for name in names:
            row = stats.get(name)
            oldest = row.oldest if row else None
            overview.append({
                "name": name,
                "ready": (row.messages - row.leased) if row else 0,
                "leased": row.leased if row else 0,
                "oldest_age": None if oldest is None else round(now - oldest, 1),
                "max_slots": row.max_slots if row else None,
                "consumers": consumers.get(name, 0),
            })
        return overview

    def queue_info(self, name: str) -> QueueInfo:
        return self.declare_queue(name, passive=True)

    def delete_queue(self, name: str, *, if_unused: bool = False, if_empty: bool = False) -> int:
        """Delete a queue with its bindings and messages; returns the messages deleted."""
        now = self.clock()
        with self._tx() as tx:
            if if_empty and self._depth(tx.conn, name):
                return 0
            if if_unused and self._consumers(tx.conn, name, now):
                return 0
            return self._drop_queues(tx.conn, [name])

    def _drop_queues(self, conn: Connection, names: list[str]) -> int:
        if not names:
            return 0
        conn.execute(delete(m.binding).where(m.binding.c.queue.in_(names)))
        conn.execute(delete(m.consumer).where(m.consumer.c.queue.in_(names)))
        conn.execute(delete(m.queue).where(m.queue.c.name.in_(names)))
        return conn.execute(delete(m.message).where(m.message.c.queue.in_(names))).rowcount

    def purge_queue(self, name: str) -> int:
        with self._tx() as tx:
            return tx.conn.execute(
                delete(m.message).where(m.message.c.queue == name, m.message.c.session.is_(None))
            ).rowcount

    def bind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        with self._tx() as tx:
            ex_type = tx.conn.execute(
                select(m.exchange.c.type).where(m.exchange.c.name == exchange)
            ).scalar()
            if ex_type is None:
                raise errors.NotFound(f"exchange {exchange!r} does not exist; declare it first")
            has_queue = tx.conn.execute(
                select(m.queue.c.name).where(m.queue.c.name == queue)
            ).scalar()
            if has_queue is None:
                raise errors.NotFound(f"queue {queue!r} does not exist; declare it first")
            self._insert_ignore(
                tx.conn,
                m.binding,
                [
                    {
                        "id": binding_id(exchange, queue, routing_key),
                        "exchange": exchange,
                        "queue": queue,
                        "routing_key": routing_key,
                    }
                ],
            )

    def unbind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        with self._tx() as tx:
            tx.conn.execute(
                delete(m.binding).where(m.binding.c.id == binding_id(exchange, queue, routing_key))
            )

    # -- publishing ---------------------------------------------------------------------

    def publish(
        self, exchange: str, routing_key: str, message: dict, *, mandatory: bool = False
    ) -> list[str]:
        """Route ``message`` and store one copy per queue; returns the queues reached."""
        slots = message_slots(message)
        priority = message_priority(message)
        expiration = message_expiration(message)
        props = message.setdefault("properties", {})
        props.setdefault("delivery_info", {}).update(exchange=exchange, routing_key=routing_key)
        payload = json.dumps(message, separators=(",", ":"))
        now = self.clock()
        with self._tx() as tx:
            conn = tx.conn
            if exchange:
                ex_type = conn.execute(
                    select(m.exchange.c.type).where(m.exchange.c.name == exchange)
                ).scalar()
                if ex_type is None:
                    raise errors.NotFound(
                        f"exchange {exchange!r} does not exist; declare it before publishing"
                    )
                bindings = conn.execute(
                    select(m.binding.c.routing_key, m.binding.c.queue).where(
                        m.binding.c.exchange == exchange
                    )
                ).all()
                targets = sorted(route(ex_type, bindings, routing_key))
            else:
                # The default exchange delivers to the queue named by the routing key.
                targets = [routing_key] if routing_key else []
                if targets:
                    self._create_queue(conn, routing_key, now=now)
            ttls = (
                dict(
                    conn.execute(
                        select(m.queue.c.name, m.queue.c.message_ttl_ms).where(
                            m.queue.c.name.in_(targets)
                        )
                    ).all()
                )
                if targets
                else {}
            )
            targets = [q for q in targets if q in ttls]
            if not targets:
                if mandatory:
                    raise errors.Unroutable(
                        f"message to exchange {exchange!r} with routing key {routing_key!r} "
                        "matched no queue"
                    )
                return []
            rows = []
            for queue in targets:
                queue_ttl = None if ttls[queue] is None else ttls[queue] / 1000
                limits = [t for t in (expiration, queue_ttl) if t is not None]
                rows.append(
                    {
                        "queue": queue,
                        "priority": priority,
                        "slots": slots,
                        "payload": payload,
                        "published_at": now,
                        "expires_at": now + min(limits) if limits else None,
                        "redelivered": False,
                    }
                )
            conn.execute(m.message.insert(), rows)
            self.jobs.published(conn, targets, message, slots, now)
            tx.queues.update(targets)
            tx.fresh.update((queue, (1, slots)) for queue in targets)
            return targets

    # -- consuming ----------------------------------------------------------------------

    def touch_session(self, session: str, principal: str, queues: Iterable[str] = ()) -> None:
        """Mark ``session`` alive (opening it if new) and record the queues it consumes."""
        now = self.clock()
        queues = set(queues)
        with self._tx() as tx:
            conn = tx.conn
            touched = conn.execute(
                update(m.session)
                .where(m.session.c.id == session, m.session.c.closed_at.is_(None))
                .values(last_seen=now)
            ).rowcount
            if not touched:
                closed = conn.execute(
                    select(m.session.c.closed_at).where(m.session.c.id == session)
                ).first()
                if closed is not None:
                    raise errors.SessionClosed(
                        f"consumer session {session} was closed or expired; open a new one"
                    )
                self._insert_ignore(
                    conn,
                    m.session,
                    [{"id": session, "principal": principal, "opened_at": now, "last_seen": now}],
                )
            current = set(
                conn.execute(
                    select(m.consumer.c.queue).where(m.consumer.c.session == session)
                ).scalars()
            )
            if current - queues:
                conn.execute(
                    delete(m.consumer).where(
                        m.consumer.c.session == session, m.consumer.c.queue.in_(current - queues)
                    )
                )
            self._insert_ignore(
                conn, m.consumer, [{"session": session, "queue": q} for q in queues - current]
            )
            if queues:
                conn.execute(
                    update(m.queue).where(m.queue.c.name.in_(queues)).values(last_used_at=now)
                )

    def claim(
        self,
        session: str,
        queues: Sequence[tuple[str, bool]],
        *,
        max_slots: int | None = None,
        max_messages: int = 1,
        total_slots: int | None = None,
    ) -> list[Delivery]:
        """Lease (or, for ``no_ack`` queues, take) up to ``max_messages`` ready messages.

        Highest priority first, then oldest. ``queues`` holds ``(name, no_ack)``
        pairs; ``max_slots`` bounds the slots of the messages leased from the
        acknowledged queues together (``no_ack`` queues carry remote control and
        events, which weigh nothing). Raises :class:`errors.SessionClosed` unless
        ``session`` is open (see :meth:`touch_session`).

        No starvation: when the next message in line that fits the consumer's
        ``total_slots`` needs more than ``max_slots`` and has waited ``starvation_guard``
        seconds, the consumer gets no smaller message from behind it; its slots free up
        as its running tasks end, until the big one fits.
        """
        if not queues:
            return []
        no_ack = {name for name, flag in queues if flag}
        names = [name for name, _ in queues]
        now = self.clock()
        msg = m.message.c
        stmt = (
            select(msg.id, msg.queue, msg.slots, msg.payload, msg.redelivered)
            .where(
                msg.queue.in_(names),
                msg.session.is_(None),
                or_(msg.expires_at.is_(None), msg.expires_at > now),
            )
            .order_by(msg.priority.desc(), msg.id)
            .limit(max_messages)
        )
        if max_slots is not None:
            fits = msg.slots <= max_slots
            stmt = stmt.where(or_(fits, msg.queue.in_(no_ack)) if no_ack else fits)
        acked = [name for name in names if name not in no_ack]
        with self._tx() as tx:
            if max_slots is not None and acked and self._big_one_waits(
                tx.conn, acked, max_slots, total_slots, now
            ):
                if not no_ack:
                    return []
                stmt = stmt.where(msg.queue.in_(no_ack))
            # Lease only to an open session, and keep it open until this commits: leases of
            # a closed session would never be released.
            is_open = select(m.session.c.id).where(
                m.session.c.id == session, m.session.c.closed_at.is_(None)
            )
            if self.dialect != "sqlite":
                is_open = is_open.with_for_update(read=True)
            if tx.conn.execute(is_open).first() is None:
                raise errors.SessionClosed(
                    f"consumer session {session} is closed, expired or was never opened; "
                    "open a new one"
                )
            candidates = tx.conn.execute(self._lock(stmt)).all()
            budget = max_slots
            chosen = []
            for row in candidates:
                if budget is not None and row.queue not in no_ack:
                    if row.slots > budget:
                        continue
                    budget -= row.slots
                chosen.append(row)
            if not chosen:
                return []
            nonce = secrets.token_hex(6)
            taken = [r.id for r in chosen if r.queue in no_ack]
            leased = [r.id for r in chosen if r.queue not in no_ack]
            if taken:
                tx.conn.execute(delete(m.message).where(msg.id.in_(taken)))
            messages = [json.loads(row.payload) for row in chosen]
            if leased:
                tx.conn.execute(
                    update(m.message)
                    .where(msg.id.in_(leased))
                    .values(session=session, lease_nonce=nonce, leased_at=now)
                )
                self.jobs.claimed(tx.conn, session, [
                    (row.id, message) for row, message in zip(chosen, messages, strict=True)
                    if row.queue not in no_ack
                ], now)
        deliveries = []
        for row, message in zip(chosen, messages, strict=True):
            props = message["properties"]
            props["delivery_tag"] = f"{row.id}.{nonce}"
            props.setdefault("delivery_info", {})["redelivered"] = bool(row.redelivered)
            deliveries.append(Delivery(row.queue, message))
        return deliveries

    def _big_one_waits(self, conn: Connection, queues: list[str], max_slots: int,
                       total_slots: int | None, now: float) -> bool:
        """Whether the next message in line is too big for now but not for later."""
        if total_slots is None:
            return False  # a consumer that does not say how big it is may never fit it
        msg = m.message.c
        # Messages this consumer can never run are not in its line: bigger workers take them.
        runnable = (msg.slots <= total_slots,)
        head = conn.execute(
            select(msg.slots, msg.published_at)
            .where(
                msg.queue.in_(queues),
                msg.session.is_(None),
                or_(msg.expires_at.is_(None), msg.expires_at > now),
                *runnable,
            )
            .order_by(msg.priority.desc(), msg.id)
            .limit(1)
        ).first()
        return (
            head is not None
            and max_slots < head.slots <= total_slots
            and now - head.published_at >= self.starvation_guard
        )

    def ready_min_slots(self, queues: Iterable[str]) -> dict[str, int]:
        """For each queue with ready messages, the smallest slot count among them."""
        queues = list(queues)
        if not queues:
            return {}
        msg = m.message.c
        now = self.clock()
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(msg.queue, func.min(msg.slots))
                .where(
                    msg.queue.in_(queues),
                    msg.session.is_(None),
                    or_(msg.expires_at.is_(None), msg.expires_at > now),
                )
                .group_by(msg.queue)
            ).all()
        return {queue: slots for queue, slots in rows}

    def _leased(
        self, conn: Connection, session: str, tags: Sequence[str]
    ) -> tuple[list[int], set[str], list[str]]:
        """Lock the messages ``session`` leases under ``tags``.

        Returns their ids, their queues and the tags (in the given order) that name no
        current lease of ``session``: unparsable, settled, or from an older lease.
        """
        wanted = {parsed for parsed in map(_parse_tag, tags) if parsed is not None}
        found: dict[tuple[int, str], str] = {}
        if wanted:
            msg = m.message.c
            stmt = select(msg.id, msg.lease_nonce, msg.queue).where(
                msg.session == session, msg.id.in_({ident for ident, _ in wanted})
            )
            if self.dialect != "sqlite":
                stmt = stmt.with_for_update()
            found = {
                (ident, nonce): queue
                for ident, nonce, queue in conn.execute(stmt)
                if (ident, nonce) in wanted
            }
        unknown = [t for t in dict.fromkeys(tags) if _parse_tag(t) not in found]
        return [ident for ident, _ in found], set(found.values()), unknown

    def ack(self, session: str, tags: Sequence[str]) -> tuple[int, list[str]]:
        """Delete acknowledged messages; returns (acked, tags not leased by ``session``)."""
        with self._tx() as tx:
            ids, _, unknown = self._leased(tx.conn, session, tags)
            if ids:
                tx.conn.execute(delete(m.message).where(m.message.c.id.in_(ids)))
                self.jobs.acked(tx.conn, ids, self.clock())
                tx.sessions.add(session)
        return len(ids), unknown

    def reject(self, session: str, tags: Sequence[str], *, requeue: bool) -> tuple[int, list[str]]:
        """Reject leased messages: requeue releases them (redelivered), else delete."""
        if not requeue:
            return self.ack(session, tags)
        with self._tx() as tx:
            ids, queues, unknown = self._leased(tx.conn, session, tags)
            if ids:
                tx.conn.execute(
                    update(m.message)
                    .where(m.message.c.id.in_(ids))
                    .values(session=None, lease_nonce=None, leased_at=None, redelivered=True)
                )
                tx.queues.update(queues)
                tx.sessions.add(session)
        return len(ids), unknown

    def close_session(self, session: str) -> int:
        """End ``session``: release its leases for redelivery; returns how many."""
        with self._tx() as tx:
            return self._close_sessions(tx, [session], self.clock())

    def _close_sessions(self, tx: _Tx, sessions: list[str], now: float) -> int:
        conn = tx.conn
        conn.execute(
            update(m.session)
            .where(m.session.c.id.in_(sessions), m.session.c.closed_at.is_(None))
            .values(closed_at=now)
        )
        where = m.message.c.session.in_(sessions)
        queues = set(conn.execute(select(m.message.c.queue).where(where).distinct()).scalars())
        released = conn.execute(
            update(m.message)
            .where(where)
            .values(session=None, lease_nonce=None, leased_at=None, redelivered=True)
        ).rowcount
        consumed = set(
            conn.execute(select(m.consumer.c.queue).where(m.consumer.c.session.in_(sessions))).scalars()
        )
        conn.execute(delete(m.consumer).where(m.consumer.c.session.in_(sessions)))
        if consumed:
            conn.execute(
                update(m.queue).where(m.queue.c.name.in_(consumed)).values(last_used_at=now)
            )
            # auto_delete queues go with their last consumer.
            orphans = [
                name
                for name in conn.execute(
                    select(m.queue.c.name).where(
                        m.queue.c.name.in_(consumed), m.queue.c.auto_delete.is_(True)
                    )
                ).scalars()
                if not self._consumers(conn, name, now)
            ]
            self._drop_queues(conn, orphans)
            queues -= set(orphans)
        tx.queues.update(queues)
        return released

    def signal(self, *, queues: Iterable[str] = (), sessions: Iterable[str] = ()) -> None:
        """Wake consumers waiting on ``queues`` or in ``sessions``, in every API process."""
        with self._tx() as tx:
            tx.queues.update(queues)
            tx.sessions.update(sessions)

    # -- housekeeping -------------------------------------------------------------------

    def reap(self) -> dict[str, int]:
        """Expire silent sessions (releasing their leases), TTL'd messages and idle queues."""
        now = self.clock()
        counts = {}
        with self._tx() as tx:
            conn = tx.conn
            dead = list(
                conn.execute(
                    select(m.session.c.id).where(
                        m.session.c.closed_at.is_(None),
                        m.session.c.last_seen < now - self.lease_timeout,
                    )
                ).scalars()
            )
            counts["sessions_expired"] = len(dead)
            counts["leases_released"] = self._close_sessions(tx, dead, now) if dead else 0
            if dead:
                log.warning(
                    "expired %d silent consumer session(s); "
                    "%d leased message(s) will be redelivered",
                    len(dead),
                    counts["leases_released"],
                )
            counts["messages_expired"] = conn.execute(
                delete(m.message).where(m.message.c.session.is_(None), m.message.c.expires_at < now)
            ).rowcount
            live_consumers = (
                select(m.consumer.c.queue)
                .join(m.session, m.session.c.id == m.consumer.c.session)
                .where(*self._live_session(now))
            )
            idle = list(
                conn.execute(
                    select(m.queue.c.name).where(
                        m.queue.c.expires_ms.is_not(None),
                        m.queue.c.last_used_at + m.queue.c.expires_ms / 1000.0 < now,
                        m.queue.c.name.not_in(live_consumers),
                    )
                ).scalars()
            )
            self._drop_queues(conn, idle)
            counts["queues_expired"] = len(idle)
            counts["results_expired"] = conn.execute(
                delete(m.result).where(m.result.c.expires_at < now)
            ).rowcount
            conn.execute(delete(m.session).where(m.session.c.closed_at < now - 3600))
        return counts

    # -- results ------------------------------------------------------------------------

    def _live_result(self, now: float):
        return or_(m.result.c.expires_at.is_(None), m.result.c.expires_at > now)

    def get_result(self, key: str) -> bytes | None:
        return self.mget_results([key])[0]

    def mget_results(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        now = self.clock()
        with self.engine.connect() as conn:
            found = dict(
                conn.execute(
                    select(m.result.c.key, m.result.c.value).where(
                        m.result.c.key.in_(set(keys)), self._live_result(now)
                    )
                ).all()
            )
        return [found.get(k) for k in keys]

    def set_result(self, key: str, value: bytes, *, expires: float | None = None) -> None:
        now = self.clock()
        row = {
            "key": key,
            "value": value,
            "updated_at": now,
            "expires_at": None if expires is None else now + expires,
        }
        with self._tx() as tx:
            self._upsert(tx.conn, m.result, row, ["key"])
            self.jobs.result_stored(tx.conn, key, value, now)

    def delete_result(self, key: str) -> None:
        with self._tx() as tx:
            tx.conn.execute(delete(m.result).where(m.result.c.key == key))

    def incr_result(self, key: str, amount: int = 1, *, expires: float | None = None) -> int:
        """Add ``amount`` to the integer stored at ``key`` (0 if absent), atomically."""
        now = self.clock()
        with self._tx() as tx:
            conn = tx.conn
            # Create the counter or lock it (see _upsert: INSERT IGNORE deadlocks on MySQL).
            self._upsert(
                conn,
                m.result,
                {"key": key, "value": b"0", "updated_at": now, "expires_at": None},
                ["key"],
                {"value": m.result.c.value},
            )
            stmt = select(m.result.c.value, m.result.c.expires_at).where(m.result.c.key == key)
            if self.dialect != "sqlite":
                stmt = stmt.with_for_update()
            current, expires_at = conn.execute(stmt).one()
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

    def expire_result(self, key: str, expires: float | None) -> bool:
        now = self.clock()
        with self._tx() as tx:
            return bool(
                tx.conn.execute(
                    update(m.result)
                    .where(m.result.c.key == key)
                    .values(expires_at=None if expires is None else now + expires)
                ).rowcount
            )

    # -- tokens -------------------------------------------------------------------------

    def create_token(self, name: str) -> str:
        """Issue a token for ``name``; only its hash is stored. Returns the token."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._tx() as tx:
            if not self._insert_ignore(
                tx.conn,
                m.token,
                [{"name": name, "token_hash": _hash_token(token), "created_at": self.clock()}],
            ):
                raise errors.Conflict(f"a token for {name!r} exists already; revoke it first")
        return token

    def list_tokens(self) -> list[dict]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(m.token.c.name, m.token.c.created_at).order_by(m.token.c.name)
            ).all()
        return [{"name": name, "created_at": created} for name, created in rows]

    def revoke_token(self, name: str) -> None:
        with self._tx() as tx:
            if not tx.conn.execute(delete(m.token).where(m.token.c.name == name)).rowcount:
                raise errors.NotFound(f"no token for {name!r}")

    def principal_for_token(self, token: str) -> str | None:
        """The name a token was issued for, or None if unknown or revoked."""
        with self.engine.connect() as conn:
            return conn.execute(
                select(m.token.c.name).where(m.token.c.token_hash == _hash_token(token))
            ).scalar()


class _Tx:
    """One transaction's connection plus the wake-ups it owes after commit."""

    __slots__ = ("conn", "queues", "sessions", "fresh")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.queues: set[str] = set()
        self.sessions: set[str] = set()
        self.fresh: dict[str, tuple[int, int]] = {}
