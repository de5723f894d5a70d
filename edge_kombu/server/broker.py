"""The broker: routing, messages and their leases, consumer sessions and the long-poll.

Flask-free, over the :class:`~edge_kombu.server.sql.SQL` kernel: every operation is
one transaction, so the broker is tested directly against SQLite, PostgreSQL and
MySQL/MariaDB. Claims skip rows that other claims hold (``SKIP LOCKED`` where the
database has it; SQLite serialises writers).

* Topology: exchanges (direct, topic, fanout), queues with ``x-expires`` and
  ``x-message-ttl``, bindings.
* Messages: :meth:`Broker.publish` stores one copy per queue reached, once: a publish
  repeated within ``dedup_window`` (same task id, retries and ETA, or the client's
  per-publish id) is answered without storing it again;
  :meth:`Broker.claim` leases them to a consumer session under a tag with a nonce, so an
  old tag can never settle a newer lease; ack deletes, reject releases or deletes.
* Sessions: a consumer's identity. One that goes silent for ``lease_timeout`` is
  expired by housekeeping (:meth:`Broker.expire`) and its leases are redelivered.
* :meth:`Broker.consume` is the long-poll of the ``consume`` route: claim, and while
  nothing fits, wait on the :class:`~edge_kombu.server.wakeup.WaiterRegistry` without
  holding a database connection. A publish of the same process may lease its message to
  such a waiting consume in its own transaction (:meth:`Broker._hand_off`): no claim.

Whenever messages become available (publish, requeue, released leases) or a session's
capacity changes (ack), the transaction owes a wake-up (see :mod:`~edge_kombu.server.sql`).
What happens to task messages is reported to a :class:`History` (the jobs history) in
the same transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import bindparam, case, delete, func, or_, select, update
from sqlalchemy.engine import Connection

from edge_kombu import errors
from edge_kombu.protocol import MAX_PRIORITY, MIN_PRIORITY, pool_slots
from edge_kombu.server import models as m
from edge_kombu.server.config import (
    DEFAULT_LEASE_TIMEOUT,
    DEFAULT_MAX_WAIT,
    DEFAULT_PUBLISH_DEDUP_WINDOW,
    DEFAULT_STARVATION_GUARD,
)
from edge_kombu.server.grants import TaskGrants
from edge_kombu.server.routing import binding_id, route
from edge_kombu.server.sql import SQL, Transaction
from edge_kombu.server.wakeup import Offer, WaiterRegistry

log = logging.getLogger(__name__)

#: Seconds a closed session is kept (so that a late request gets "closed", not "unknown").
CLOSED_SESSION_KEPT = 3600.0
#: Sessions whose opener a process remembers (for the settlements' authorization).
SESSION_OPENERS_KEPT = 100_000
_CREDENTIAL_GONE = "the credential was revoked or expired while the consume waited"


@dataclass(frozen=True)
class Delivery:
    queue: str
    message: dict
    #: Leased by the publish that stored it (see :meth:`Broker._hand_off`).
    handed: bool = False


@dataclass(frozen=True)
class QueueInfo:
    name: str
    messages: int
    consumers: int


class History(Protocol):
    """Told what happens to messages, inside the transaction that does it (the jobs history)."""

    def published(self, conn: Connection, queues: Sequence[str], message: dict, slots: int,
                  now: float) -> None: ...

    def claimed(self, conn: Connection, session: str, leased: Iterable[tuple[int, dict]],
                now: float) -> None: ...

    def acked(self, conn: Connection, message_ids: Sequence[int], now: float) -> None: ...


class DroppedMessages(Protocol):
    """Told of the messages dropped because their time ran out, inside the transaction that
    drops them (Celery tasks among them end as revoked: server/revocations.py)."""

    def dropped(self, conn: Connection, messages: Iterable[dict], now: float) -> int: ...


# -- what a message says about itself -------------------------------------------------------


def message_slots(message: dict) -> int:
    """The task's weight in worker slots from the ``pool_slots`` header (default 1)."""
    try:
        return pool_slots(message.get("headers"))
    except ValueError as exc:
        raise errors.InvalidRequest(f"message.{exc}") from None


def message_priority(message: dict) -> int:
    """Higher first: Celery's 0..255, or an Airflow task's whole ``priority_weight``."""
    priority = (message.get("properties") or {}).get("priority") or 0
    if (isinstance(priority, bool) or not isinstance(priority, int)
            or not MIN_PRIORITY <= priority <= MAX_PRIORITY):
        raise errors.InvalidRequest(
            f"message.properties.priority must be an integer from {MIN_PRIORITY} to "
            f"{MAX_PRIORITY}, got {priority!r}"
        )
    return priority


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


def publish_key(exchange: str, routing_key: str, message: dict, publish_id: str | None,
                principal: str | None) -> str | None:
    """What makes a publish the same one, hashed to 40 characters (None: never the same).

    A Celery task message is the same message when it has the same task id, retry count
    and ETA, to the same exchange and routing key: the caller sent it again (Airflow's
    executor after its own timeout), or the client resent it. A ``retry()`` counts one
    more retry: a new message. Any other persistent message is the same when the client
    resent it under its per-publish id. Transient messages (events, remote control
    broadcasts) are not looked after: a duplicate of one is harmless, and they are many.
    """
    headers = message.get("headers") or {}
    task_id = headers.get("id")
    if isinstance(task_id, str) and isinstance(headers.get("task"), str):
        parts = ["task", exchange, routing_key, task_id, headers.get("retries") or 0,
                 headers.get("eta")]
    elif publish_id and (message.get("properties") or {}).get("delivery_mode") != 1:
        parts = ["publish", principal or "", publish_id]
    else:
        return None
    return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()


# The publish's statements, built once (building one and its cache key costs more than
# the database takes to run it); their values are bound parameters.
_EXCHANGE_TYPE = select(m.exchange.c.type).where(m.exchange.c.name == bindparam("exchange"))
_BINDINGS = select(m.binding.c.routing_key, m.binding.c.queue).where(
    m.binding.c.exchange == bindparam("exchange"))
_QUEUE_TTLS = select(m.queue.c.name, m.queue.c.message_ttl_ms).where(
    m.queue.c.name.in_(bindparam("names", expanding=True)))
_INSERT_MESSAGE = m.message.insert()


def _delivery(queue: str, ident: int, nonce: str, message: dict, *, redelivered: bool,
              handed: bool = False) -> Delivery:
    """``message`` (stored as ``ident``, leased under ``nonce``) as its consumer gets it."""
    props = message["properties"]
    props["delivery_tag"] = f"{ident}.{nonce}"
    props.setdefault("delivery_info", {})["redelivered"] = redelivered
    return Delivery(queue, message, handed)


def _positive_ms(arguments: dict, key: str) -> int | None:
    value = arguments.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise errors.InvalidRequest(
            f"arguments.{key} must be a positive number of milliseconds, got {value!r}"
        )
    return int(value)


def _parse_tag(tag: str) -> tuple[int, str] | None:
    ident, _, nonce = tag.partition(".")
    # A tag this server never made is unknown: ASCII digits within BIGINT, a short nonce.
    if not (ident.isascii() and ident.isdigit()) or len(ident) > 18 or not nonce \
            or len(nonce) > 16:
        return None
    return int(ident), nonce


class Broker:
    """Every broker operation, each one transaction of ``sql``."""

    def __init__(
        self,
        sql: SQL,
        *,
        lease_timeout: float = DEFAULT_LEASE_TIMEOUT,
        starvation_guard: float = DEFAULT_STARVATION_GUARD,
        max_wait: float = DEFAULT_MAX_WAIT,
        waiters: WaiterRegistry | None = None,
        history: History | None = None,
        grants: TaskGrants | None = None,
        dedup_window: float = DEFAULT_PUBLISH_DEDUP_WINDOW,
        expired: DroppedMessages | None = None,
    ) -> None:
        if lease_timeout <= 0:
            raise ValueError("lease_timeout must be > 0 seconds")
        self.sql = sql
        self.lease_timeout = lease_timeout
        self.starvation_guard = starvation_guard
        self.max_wait = max_wait
        self.waiters = waiters if waiters is not None else WaiterRegistry()
        self.history = history
        self.grants = grants
        self.dedup_window = dedup_window
        self.expired = expired
        # Liveness: written by a consume at most every lease_timeout / 2, and for the
        # sessions whose consume waits here by keep_waiting_alive, in one statement.
        self._touches = _SessionTouches(self.touch_session, interval=lease_timeout / 2,
                                        clock=sql.clock)
        # Who opened each session: it never changes while the session's row exists.
        self._openers: OrderedDict[str, str] = OrderedDict()
        self._openers_lock = threading.Lock()
        #: The claim's statements, built once per shape (:meth:`_claim_statement`).
        self._claim_statements: dict[tuple, object] = {}
        self._empty = _KnownEmpty(lease_timeout)
        #: Whether this process hears of every message made claimable: only if its
        #: transactions wake its registry; the PostgreSQL listener makes it "while
        #: listening"; elsewhere the ready poller hears of other processes' within its tick.
        self.hearing: Callable[[], bool] = \
            lambda: getattr(self.sql.wakeup, "registry", None) is self.waiters
        #: Called in the transaction that writes a session's liveness, with ``(conn,
        #: session, principal, queues, node, now)``; ``node`` is the Celery worker the
        #: consumer says it is, if it says (the worker registry registers plain workers).
        self.session_observers: list[Callable[..., None]] = []

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
        with self.sql.transaction() as tx:
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
            self.sql.insert_ignore(tx.conn, m.exchange, [{
                "name": name,
                "type": type,
                "durable": durable,
                "auto_delete": auto_delete,
                "arguments": json.dumps(arguments or {}),
            }])

    def delete_exchange(self, name: str) -> None:
        with self.sql.transaction() as tx:
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
        owner: str | None = None,
        central: bool = False,
        principal: str | None = None,
        own_sessions: Iterable[str] = (),
    ) -> QueueInfo:
        """Create a queue (``passive``: look it up). ``owner``: a worker credential's private
        queue; it is recorded at creation, and refused if the queue has another owner.
        ``central``: the centre declares it, and takes it over from any owner.
        ``own_sessions``: the declaring process's sessions (opened by ``principal``), whose
        consumers the answer does not count: a worker carrying its session on over a new
        connection is not another consumer of its own mailbox."""
        arguments = arguments or {}
        expires_ms = _positive_ms(arguments, "x-expires")
        ttl_ms = arguments.get("x-message-ttl")
        if ttl_ms is not None and (
            isinstance(ttl_ms, bool) or not isinstance(ttl_ms, (int, float)) or ttl_ms < 0
        ):
            raise errors.InvalidRequest(
                f"arguments.x-message-ttl must be a number of milliseconds >= 0, got {ttl_ms!r}"
            )
        now = self.sql.clock()
        with self.sql.transaction() as tx:
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
                    owner=owner,
                    now=now,
                    touch=True,
                )
            if central and not passive:
                # A queue the centre declares is the centre's (say, a reply queue a worker
                # declared under the centre's name while the centre's was gone).
                tx.conn.execute(update(m.queue).where(m.queue.c.name == name,
                                                      m.queue.c.owner.is_not(None))
                                .values(owner=None))
            if owner is not None:
                stored = tx.conn.execute(
                    select(m.queue.c.owner).where(m.queue.c.name == name)
                ).scalar()
                if stored != owner:
                    raise errors.Forbidden(
                        f"queue {name!r} was declared by another credential; a private queue "
                        "(reply, event) belongs to the credential that declared it"
                    )
            own = list(own_sessions) if principal is not None else []
            return QueueInfo(name, self._depth(tx.conn, name),
                             self._consumers(tx.conn, name, now, own, principal))

    def _create_queue(
        self, conn: Connection, name: str, *, now: float, touch: bool = False, **columns
    ) -> None:
        """Create queue ``name`` unless it exists; ``touch`` marks an existing one used."""
        row = {"durable": True, "auto_delete": False, "exclusive": False}
        row.update(columns)
        row.update(name=name, created_at=now, last_used_at=now)
        if touch:
            self.sql.upsert(conn, m.queue, row, ["name"], {"last_used_at": now})
        else:
            self.sql.insert_ignore(conn, m.queue, [row])

    def _depth(self, conn: Connection, name: str) -> int:
        return conn.execute(
            select(func.count())
            .select_from(m.message)
            .where(m.message.c.queue == name, m.message.c.session.is_(None))
        ).scalar_one()

    def _consumers(self, conn: Connection, name: str, now: float,
                   own_sessions: Sequence[str] = (), principal: str | None = None) -> int:
        """Live consumers of queue ``name``, but for ``own_sessions`` of ``principal``."""
        where = [m.consumer.c.queue == name, *self._live_session(now)]
        if own_sessions:
            where.append(or_(m.session.c.id.not_in(list(own_sessions)),
                             m.session.c.principal != principal))
        return conn.execute(
            select(func.count())
            .select_from(m.consumer.join(m.session, m.session.c.id == m.consumer.c.session))
            .where(*where)
        ).scalar_one()

    def _live_session(self, now: float):
        return (m.session.c.closed_at.is_(None), m.session.c.last_seen >= now - self.lease_timeout)

    def queue_overview(self) -> list[dict]:
        """Every queue: ready and leased messages, oldest ready age, largest slots asked."""
        now = self.sql.clock()
        msg = m.message.c
        live = or_(msg.expires_at.is_(None), msg.expires_at > now)
        # Age and size of the messages that wait, not of those already running.
        waiting = msg.session.is_(None)
        with self.sql.connect() as conn:
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

    def queue_owners(self, names: Iterable[str]) -> dict[str, str | None]:
        """The owner of each existing queue of ``names`` (None: not a private queue)."""
        names = set(names)
        if not names:
            return {}
        with self.sql.connect() as conn:
            return dict(conn.execute(
                select(m.queue.c.name, m.queue.c.owner).where(m.queue.c.name.in_(names))
            ).all())

    def queue_info(self, name: str) -> QueueInfo:
        return self.declare_queue(name, passive=True)

    def delete_queue(self, name: str, *, if_unused: bool = False, if_empty: bool = False) -> int:
        """Delete a queue with its bindings and messages; returns the messages deleted."""
        now = self.sql.clock()
        with self.sql.transaction() as tx:
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
        with self.sql.transaction() as tx:
            return tx.conn.execute(
                delete(m.message).where(m.message.c.queue == name, m.message.c.session.is_(None))
            ).rowcount

    def bind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        with self.sql.transaction() as tx:
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
            self.sql.insert_ignore(tx.conn, m.binding, [{
                "id": binding_id(exchange, queue, routing_key),
                "exchange": exchange,
                "queue": queue,
                "routing_key": routing_key,
            }])

    def unbind(self, queue: str, exchange: str, routing_key: str = "") -> None:
        with self.sql.transaction() as tx:
            tx.conn.execute(
                delete(m.binding).where(m.binding.c.id == binding_id(exchange, queue, routing_key))
            )

    # -- publishing ---------------------------------------------------------------------

    def publish(
        self, exchange: str, routing_key: str, message: dict, *, mandatory: bool = False,
        check: Callable[[str, str, list[str]], None] | None = None,
        publish_id: str | None = None, principal: str | None = None,
    ) -> list[str]:
        """Route ``message`` and store one copy per queue; returns the queues reached.

        See :meth:`publish_once`; a repeated publish answers the queues it reaches."""
        return self.publish_once(exchange, routing_key, message, mandatory=mandatory,
                                 check=check, publish_id=publish_id, principal=principal)[0]

    def publish_once(
        self, exchange: str, routing_key: str, message: dict, *, mandatory: bool = False,
        check: Callable[[str, str, list[str]], None] | None = None,
        publish_id: str | None = None, principal: str | None = None,
    ) -> tuple[list[str], bool]:
        """Route ``message`` and store one copy per queue, unless it is a repeat.

        Returns the queues reached and whether this was a repeat of a publish stored less
        than ``dedup_window`` seconds ago (see :func:`publish_key`): then nothing is
        stored and the answer is the same. The key is written in the transaction that
        stores the copies, so neither is ever stored without the other; one key per
        publish, however many queues a fanout or topic exchange reaches.

        ``check(exchange, routing_key, queues)`` may refuse the queues the message would
        reach (a worker credential's scope) before anything is stored."""
        slots = message_slots(message)
        priority = message_priority(message)
        expiration = message_expiration(message)
        props = message.setdefault("properties", {})
        props.setdefault("delivery_info", {}).update(exchange=exchange, routing_key=routing_key)
        payload = json.dumps(message, separators=(",", ":"))
        key = (publish_key(exchange, routing_key, message, publish_id, principal)
               if self.dedup_window > 0 else None)
        now = self.sql.clock()
        with self.sql.transaction() as tx:
            conn = tx.conn
            if exchange:
                ex_type = conn.execute(_EXCHANGE_TYPE, {"exchange": exchange}).scalar()
                if ex_type is None:
                    raise errors.NotFound(
                        f"exchange {exchange!r} does not exist; declare it before publishing"
                    )
                bindings = conn.execute(_BINDINGS, {"exchange": exchange}).all()
                targets = sorted(route(ex_type, bindings, routing_key))
            else:
                # The default exchange delivers to the queue named by the routing key.
                targets = [routing_key] if routing_key else []
                if targets:
                    self._create_queue(conn, routing_key, now=now)
            if check is not None:
                check(exchange, routing_key, targets)  # raising rolls the transaction back
            ttls = dict(conn.execute(_QUEUE_TTLS, {"names": targets}).all()) if targets else {}
            targets = [q for q in targets if q in ttls]
            if not targets:
                if mandatory:
                    raise errors.Unroutable(
                        f"message to exchange {exchange!r} with routing key {routing_key!r} "
                        "matched no queue"
                    )
                return [], False
            if key is not None and not self._first_publish(conn, key, now):
                return targets, True
            rows = []
            for queue in targets:
                queue_ttl = None if ttls[queue] is None else ttls[queue] / 1000
                limits = [t for t in (expiration, queue_ttl) if t is not None]
                rows.append({
                    "queue": queue,
                    "priority": priority,
                    "slots": slots,
                    "payload": payload,
                    "published_at": now,
                    "expires_at": now + min(limits) if limits else None,
                    "redelivered": False,
                })
            inserted = conn.execute(_INSERT_MESSAGE, rows)
            if self.history is not None:
                self.history.published(conn, targets, message, slots, now)
            if len(rows) == 1 and self._hand_off(tx, rows[0], inserted.inserted_primary_key[0]):
                return targets, False  # leased: nothing for anyone to claim
            tx.queues.update(targets)
            tx.fresh.update((queue, (1, slots)) for queue in targets)
            return targets, False

    def _hand_off(self, tx: Transaction, row: dict, ident: int) -> bool:
        """In the publishing transaction: lease the message just stored (``row``, id
        ``ident``) to a consume of this process that waits for one, and answer that
        consume with it once ``tx`` committed. Returns whether it did.

        Only to a consume that found nothing and asked for messages of this size, and only
        while no other ready message of its acknowledged queues is one it could ever run:
        one of those goes first (priority, then age), or holds smaller ones back (the
        starvation guard), and its own claim decides. Its session must be open, locked as
        a claim locks it; the lease, the job history and the worker credential's grant
        are written as a claim writes them.
        """
        queue, slots = row["queue"], row["slots"]
        reserved = self.waiters.reserve(queue, slots)
        if reserved is None:
            return False
        waiter, offer = reserved
        handed: list[Delivery] = []
        tx.ended.append(lambda committed: self.waiters.resolve(
            waiter, handed if committed else []))
        conn, now = tx.conn, row["published_at"]
        others = conn.execute(self._claim_statement("others", offer.total_slots is not None), {
            "names": sorted(offer.queues), "now": now, "id": ident,
            "total_slots": offer.total_slots}).first()
        if others is not None or conn.execute(self._claim_statement("is_open"),
                                              {"session": waiter.session}).first() is None:
            return False
        nonce = secrets.token_hex(6)
        message = json.loads(row["payload"])
        self._lease(conn, waiter.session, offer.grantee, [(ident, message)], nonce, now)
        handed.append(_delivery(queue, ident, nonce, message, redelivered=False, handed=True))
        return True

    def _lease(self, conn: Connection, session: str, grantee: str | None,
               leased: list[tuple[int, dict]], nonce: str, now: float) -> None:
        """Lease ``leased`` (id, message) to ``session`` under ``nonce``, with what goes
        with a lease: the job history's "received" and the worker credential's grants."""
        conn.execute(self._claim_statement("lease"), {
            "ids": [ident for ident, _ in leased], "lease_session": session,
            "lease_nonce_value": nonce, "lease_at": now})
        if self.history is not None:
            self.history.claimed(conn, session, leased, now)
        if grantee is not None and self.grants is not None:
            self.grants.record(conn, grantee, [message for _, message in leased], now)

    def _first_publish(self, conn: Connection, key: str, now: float) -> bool:
        """Record publish ``key``; False if it was recorded within the dedupe window.

        Concurrent repeats wait on the key's row until the first one commits (or rolls
        back), then only read it: upgrading the shared lock MySQL's ``INSERT IGNORE`` took
        on a duplicate would deadlock them. A key older than the window that housekeeping
        has not purged yet is taken over.
        """
        row = {"key": key, "created_at": now}
        if self.sql.insert_ignore(conn, m.publish_key, [row]):
            return True
        created = conn.execute(
            select(m.publish_key.c.created_at).where(m.publish_key.c.key == key)
        ).scalar()
        if created is not None and created >= now - self.dedup_window:
            return False
        self.sql.upsert(conn, m.publish_key, row, ["key"])
        return True

    # -- consuming ----------------------------------------------------------------------

    def consume(
        self,
        session: str,
        principal: str,
        queues: Sequence[tuple[str, bool]],
        *,
        max_slots: int | None = None,
        max_messages: int = 1,
        total_slots: int | None = None,
        wait: float = 0.0,
        grantee: str | None = None,
        still_valid: Callable[..., bool] | None = None,
        valid_until: float | None = None,
        node: dict | None = None,
    ) -> list[Delivery]:
        """The long-poll: claim (see :meth:`claim`), and while nothing comes, wait for it.

        Waits at most ``wait`` seconds (capped at ``max_wait``) on the waiter registry,
        holding no database connection, and claims again when woken, unless a publish of this
        process handed it a message meanwhile (see :meth:`_hand_off`). Answers at once,
        even empty, when this session's capacity changed (an ack, a close), so that the
        client asks again with its new capacity. The session's liveness is written at
        most every ``lease_timeout / 2`` seconds per process when a consume starts, and
        kept fresh while one waits by :meth:`keep_waiting_alive`.

        No claim at the start when this process knows it would find nothing: the session's
        last claim, with the same queues and capacity, found nothing (not held back by the
        starvation guard), and no wake-up for those queues came since (see
        :meth:`WaiterRegistry.heard`); at least one claim per ``lease_timeout`` all the same.
        On databases without ``NOTIFY`` another process's publish in between is claimed at
        the ready poller's next tick, as one made while the consume waits.

        ``grantee`` (a worker credential) is granted the task messages it leases.
        ``still_valid`` re-checks the caller's credential before each claim, after a claim
        that found messages, and at ``valid_until`` (its expiry, on the kernel's clock)
        while waiting; a change to any credential wakes every waiting consume
        (:meth:`WaiterRegistry.recheck_all`), which re-checks it then. A revocation cuts
        the poll and closes the session, so nothing is handed over and its leases are
        redelivered.
        """
        names = [name for name, _ in queues]
        wait = min(wait, self.max_wait)
        self._touches.touch(session, principal, names, node)
        deadline = time.monotonic() + wait
        try:
            found, waiter = self._poll(session, queues, deadline, still_valid, valid_until,
                                       max_slots=max_slots, max_messages=max_messages,
                                       total_slots=total_slots, grantee=grantee)
        except errors.AuthenticationFailed:
            # A revoked credential's session ends: its leases (and any just taken) go back,
            # and the other consumers of its queues hear of them and of any wake-up it had.
            self.close_session(session)
            self.signal(queues=names)
            raise
        if waiter.event.is_set() and not waiter.by_session and waiter.nudged:
            # Woken for one message that this consume did not claim (it had its answer, or its
            # wait ran out): a publish wakes one waiter per message, so hand the wake-up on.
            self.waiters.wake_some({queue: (1, None) for queue in waiter.queues})
        return found

    def _poll(self, session, queues, deadline, still_valid, valid_until, **claim_args):
        """Claim, and wait while nothing comes: the loop of :meth:`consume`."""
        names = [name for name, _ in queues]
        with self.waiters.waiting(names, session, claim_args["max_slots"]) as waiter:
            try:
                found = self._poll_waiting(waiter, session, queues, deadline, still_valid,
                                           valid_until, **claim_args)
            finally:
                # A publish that reserved this consume just before its wait ended: the lease
                # is its session's, and the message goes in this answer.
                handed = self.waiters.withdraw(waiter)
            if handed and still_valid is not None and not still_valid(fresh=True):
                raise errors.AuthenticationFailed(_CREDENTIAL_GONE)
        return found + handed, waiter

    def _poll_waiting(self, waiter, session, queues, deadline, still_valid, valid_until,
                      **claim_args) -> list[Delivery]:
        """The claims and waits of :meth:`_poll`; between two, ``waiter`` is open to a
        hand-off while the last claim found nothing that the starvation guard held back."""
        names = [name for name, _ in queues]
        recheck = still_valid is not None
        asked = (tuple(queues), claim_args["max_slots"], claim_args["total_slots"])
        acked = frozenset(name for name, no_ack in queues if not no_ack)
        offer = Offer(acked, claim_args["max_slots"], claim_args["total_slots"],
                      claim_args["grantee"]) if acked else None
        first = True
        while True:
            waiter.nudged = False
            waiter.event.clear()
            found = self.waiters.withdraw(waiter)  # handed by a publish while it waited
            self._check_credential(still_valid)
            settled = True
            if found:
                pass
            elif first and self.hearing() and self._empty.knows(
                    session, asked, self.waiters.heard(names)):
                found = []
            else:
                heard = self.waiters.heard(names)  # before the claim: nothing missed
                found, settled = self._claim(session, queues, **claim_args)
                if not found and settled and self.hearing():
                    self._empty.note(session, asked, heard)
            first = False
            if found and recheck and not still_valid(fresh=True):
                raise errors.AuthenticationFailed(_CREDENTIAL_GONE)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0 or waiter.by_session:
                break
            if offer is not None and settled:
                self.waiters.offer(waiter, offer)
            woken = False
            while not woken and (remaining := deadline - time.monotonic()) > 0:
                expires_in = None if not recheck or valid_until is None \
                    else valid_until - self.sql.clock()
                if expires_in is not None:  # wake when the credential expires
                    remaining = min(remaining, max(expires_in, 0) + 0.01)
                woken = waiter.wait(remaining)
                if not woken and expires_in is not None and expires_in <= remaining:
                    self._check_credential(still_valid)
                    valid_until = None  # still valid: renewed, wait out the deadline
            if not woken or waiter.by_session:
                # Timed out, or this session's capacity changed: let the client ask again.
                break
        return found

    @staticmethod
    def _check_credential(still_valid: Callable[..., bool] | None) -> None:
        if still_valid is not None and not still_valid():
            raise errors.AuthenticationFailed(_CREDENTIAL_GONE)

    def session_principal(self, session: str) -> str | None:
        """Who opened ``session`` (None if unknown); from memory once this process knows.

        A session's opener never changes while its row exists (a touch by anyone else is
        refused); its id could serve another opener only once the row is forgotten, an
        hour after it closed, and only for a client that chose that id on purpose."""
        with self._openers_lock:
            opener = self._openers.get(session)
        if opener is not None:
            return opener
        with self.sql.connect() as conn:
            opener = conn.execute(
                select(m.session.c.principal).where(m.session.c.id == session)
            ).scalar()
        if opener is not None:
            self._remember_opener(session, opener)
        return opener

    def _remember_opener(self, session: str, principal: str) -> None:
        with self._openers_lock:
            self._openers[session] = principal
            self._openers.move_to_end(session)
            while len(self._openers) > SESSION_OPENERS_KEPT:
                self._openers.popitem(last=False)

    def keep_waiting_alive(self) -> int:
        """Mark alive, in one statement, the sessions with a consume waiting in this process
        whose liveness was written here more than ``lease_timeout / 4`` ago (a reaper job,
        every ``lease_timeout / 8``): a waiting consume is a live session, and the next
        consume of an idle one need not write. Returns how many were written."""
        stale = self._touches.stale(self.waiters.waiting_sessions(), self.lease_timeout / 4)
        if not stale:
            return 0
        now = self.sql.clock()
        with self.sql.transaction() as tx:
            for start in range(0, len(stale), 500):
                tx.conn.execute(update(m.session).where(
                    m.session.c.id.in_(stale[start:start + 500]),
                    m.session.c.closed_at.is_(None)).values(last_seen=now))
        self._touches.written(stale, now)
        return len(stale)

    def touch_session(self, session: str, principal: str, queues: Iterable[str] = (),
                      node: dict | None = None) -> None:
        """Mark ``session`` alive (opening it if new) and record the queues it consumes;
        tell :attr:`session_observers` (with ``node``, the Celery worker consuming)."""
        now = self.sql.clock()
        queues = set(queues)
        with self.sql.transaction() as tx:
            conn = tx.conn
            touched = conn.execute(
                update(m.session)
                .where(m.session.c.id == session, m.session.c.closed_at.is_(None),
                       m.session.c.principal == principal)
                .values(last_seen=now)
            ).rowcount
            if not touched:
                closed = conn.execute(
                    select(m.session.c.closed_at, m.session.c.principal)
                    .where(m.session.c.id == session)
                ).first()
                if closed is not None and closed.principal != principal:
                    raise errors.Forbidden(
                        f"consumer session {session} belongs to another credential"
                    )
                if closed is not None:
                    raise errors.SessionClosed(
                        f"consumer session {session} was closed or expired; open a new one"
                    )
                self.sql.insert_ignore(
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
            self.sql.insert_ignore(
                conn, m.consumer, [{"session": session, "queue": q} for q in queues - current]
            )
            if queues:
                conn.execute(
                    update(m.queue).where(m.queue.c.name.in_(queues)).values(last_used_at=now)
                )
            for observer in self.session_observers:
                observer(conn, session, principal, queues, node, now)
        self._remember_opener(session, principal)

    def claim(
        self,
        session: str,
        queues: Sequence[tuple[str, bool]],
        *,
        max_slots: int | None = None,
        max_messages: int = 1,
        total_slots: int | None = None,
        grantee: str | None = None,
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
        return self._claim(session, queues, max_slots=max_slots, max_messages=max_messages,
                           total_slots=total_slots, grantee=grantee)[0]

    def _claim(self, session, queues, *, max_slots, max_messages, total_slots, grantee
               ) -> tuple[list[Delivery], bool]:
        """:meth:`claim`, and whether finding nothing says nothing fits this consumer now
        (False: the starvation guard held smaller messages back)."""
        if not queues:
            return [], True
        no_ack = {name for name, flag in queues if flag}
        names = [name for name, _ in queues]
        now = self.sql.clock()
        params = {"names": names, "now": now, "max_messages": max_messages,
                  "max_slots": max_slots, "no_ack": sorted(no_ack)}
        acked = [name for name in names if name not in no_ack]
        guarded = False
        with self.sql.transaction() as tx:
            if max_slots is not None and acked and self._big_one_waits(
                tx.conn, acked, max_slots, total_slots, now
            ):
                if not no_ack:
                    return [], False
                guarded = True
            # Lease only to an open session, and keep it open until this commits: leases of
            # a closed session would never be released.
            if tx.conn.execute(self._claim_statement("is_open"),
                               {"session": session}).first() is None:
                raise errors.SessionClosed(
                    f"consumer session {session} is closed, expired or was never opened; "
                    "open a new one"
                )
            shape = ("candidates", max_slots is not None, bool(no_ack), guarded)
            candidates = tx.conn.execute(self._claim_statement(*shape), params).all()
            budget = max_slots
            chosen = []
            for row in candidates:
                if budget is not None and row.queue not in no_ack:
                    if row.slots > budget:
                        continue
                    budget -= row.slots
                chosen.append(row)
            if not chosen:
                return [], not guarded
            nonce = secrets.token_hex(6)
            taken = [r.id for r in chosen if r.queue in no_ack]
            if taken:
                tx.conn.execute(delete(m.message).where(m.message.c.id.in_(taken)))
            messages = [json.loads(row.payload) for row in chosen]
            leased = [(row.id, message) for row, message in zip(chosen, messages, strict=True)
                      if row.queue not in no_ack]
            if leased:
                self._lease(tx.conn, session, grantee, leased, nonce, now)
        return [_delivery(row.queue, row.id, nonce, message, redelivered=bool(row.redelivered))
                for row, message in zip(chosen, messages, strict=True)], True

    def _claim_statement(self, *shape):
        """The claim's statement of ``shape``, built once: building a statement and its
        cache key cost the API server more than SQLite takes to run it (a third of a claim
        in a profile). Their values are bound parameters of the same names as in
        :meth:`_claim` (``names``, ``now``, ...)."""
        stmt = self._claim_statements.get(shape)
        if stmt is None:
            stmt = self._claim_statements[shape] = self._build_claim_statement(*shape)
        return stmt

    def _build_claim_statement(self, what: str, limit_slots: bool = False,
                               with_no_ack: bool = False, guarded: bool = False):
        msg = m.message.c
        ready = (
            msg.queue.in_(bindparam("names", expanding=True)),
            msg.session.is_(None),
            or_(msg.expires_at.is_(None), msg.expires_at > bindparam("now")),
        )
        if what == "is_open":
            return self.sql.lock_shared(select(m.session.c.id).where(
                m.session.c.id == bindparam("session"), m.session.c.closed_at.is_(None)))
        if what == "lease":
            return (update(m.message).where(msg.id.in_(bindparam("ids", expanding=True)))
                    .values(session=bindparam("lease_session"),
                            lease_nonce=bindparam("lease_nonce_value"),
                            leased_at=bindparam("lease_at")))
        if what == "others":  # a ready message, but ``id``, that might go before it
            stmt = select(msg.id).where(*ready, msg.id != bindparam("id"))
            if limit_slots:  # (those the consumer can never run do not)
                stmt = stmt.where(msg.slots <= bindparam("total_slots"))
            return stmt.limit(1)
        if what == "head":
            return (select(msg.slots, msg.published_at)
                    .where(*ready, msg.slots <= bindparam("total_slots"))
                    .order_by(msg.priority.desc(), msg.id).limit(1))
        stmt = (
            select(msg.id, msg.queue, msg.slots, msg.payload, msg.redelivered)
            .where(*ready)
            .order_by(msg.priority.desc(), msg.id)
            .limit(bindparam("max_messages"))
        )
        if limit_slots:
            fits = msg.slots <= bindparam("max_slots")
            stmt = stmt.where(or_(fits, msg.queue.in_(bindparam("no_ack", expanding=True)))
                              if with_no_ack else fits)
        if guarded:
            stmt = stmt.where(msg.queue.in_(bindparam("no_ack", expanding=True)))
        return self.sql.skip_locked(stmt)

    def _big_one_waits(self, conn: Connection, queues: list[str], max_slots: int,
                       total_slots: int | None, now: float) -> bool:
        """Whether the next message in line is too big for now but not for later."""
        if total_slots is None:
            return False  # a consumer that does not say how big it is may never fit it
        # Messages this consumer can never run are not in its line: bigger workers take them.
        head = conn.execute(self._claim_statement("head"), {
            "names": queues, "now": now, "total_slots": total_slots}).first()
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
        now = self.sql.clock()
        with self.sql.connect() as conn:
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

    # -- settling -----------------------------------------------------------------------

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
            stmt = self.sql.lock_rows(select(msg.id, msg.lease_nonce, msg.queue).where(
                msg.session == session, msg.id.in_({ident for ident, _ in wanted})
            ))
            found = {
                (ident, nonce): queue
                for ident, nonce, queue in conn.execute(stmt)
                if (ident, nonce) in wanted
            }
        unknown = [t for t in dict.fromkeys(tags) if _parse_tag(t) not in found]
        return [ident for ident, _ in found], set(found.values()), unknown

    def ack(self, session: str, tags: Sequence[str]) -> tuple[int, list[str]]:
        """Delete acknowledged messages; returns (acked, tags not leased by ``session``)."""
        with self.sql.transaction() as tx:
            ids, _, unknown = self._leased(tx.conn, session, tags)
            if ids:
                tx.conn.execute(delete(m.message).where(m.message.c.id.in_(ids)))
                if self.history is not None:
                    self.history.acked(tx.conn, ids, self.sql.clock())
                tx.sessions.add(session)
        return len(ids), unknown

    def reject(self, session: str, tags: Sequence[str], *, requeue: bool) -> tuple[int, list[str]]:
        """Reject leased messages: requeue releases them (redelivered), else delete."""
        if not requeue:
            return self.ack(session, tags)
        with self.sql.transaction() as tx:
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

    # -- sessions -----------------------------------------------------------------------

    def resume_session(self, session: str, held: Sequence[str]) -> tuple[int, list[str]]:
        """A consumer carries ``session`` on over a new connection: keep its leases named in
        ``held``, release the others for redelivery (consumes whose answer was lost with the
        old connection). Returns (released, held tags that name no lease of ``session``).
        Raises SessionClosed if ``session`` was closed or expired meanwhile."""
        keep = {parsed for parsed in map(_parse_tag, held) if parsed is not None}
        msg = m.message.c
        with self.sql.transaction() as tx:
            closed = tx.conn.execute(
                select(m.session.c.closed_at).where(m.session.c.id == session)
            ).first()
            if closed is not None and closed.closed_at is not None:
                raise errors.SessionClosed(
                    f"consumer session {session} was closed or expired; its messages were "
                    "redelivered"
                )
            leased = tx.conn.execute(self.sql.lock_rows(
                select(msg.id, msg.lease_nonce, msg.queue).where(msg.session == session)
            )).all()
            lost = [row for row in leased if (row.id, row.lease_nonce) not in keep]
            if lost:
                tx.conn.execute(
                    update(m.message)
                    .where(m.message.c.id.in_([row.id for row in lost]))
                    .values(session=None, lease_nonce=None, leased_at=None, redelivered=True)
                )
                tx.queues.update(row.queue for row in lost)
                tx.sessions.add(session)  # its consume must ask again with its capacity
        if lost:
            log.info("consumer session %s resumed; %d message(s) it never received will be "
                     "redelivered", session, len(lost))
        current = {(row.id, row.lease_nonce) for row in leased}
        return len(lost), [tag for tag in dict.fromkeys(held) if _parse_tag(tag) not in current]

    def close_session(self, session: str) -> int:
        """End ``session`` and answer its waiting consume; returns the leases released."""
        with self.sql.transaction() as tx:
            released = self.close_sessions(tx, [session], self.sql.clock())
        self._touches.forget(session)
        self.waiters.wake_sessions([session])
        return released

    def close_sessions(self, tx: Transaction, sessions: list[str], now: float) -> int:
        """In ``tx``: close ``sessions`` and release their leases for redelivery.

        Their consumers go, and with them the ``auto_delete`` queues nobody else consumes.
        Returns how many leases were released.
        """
        conn = tx.conn
        self._empty.forget(sessions)  # their next consume claims (and hears they are closed)
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
        with self.sql.transaction() as tx:
            tx.queues.update(queues)
            tx.sessions.update(sessions)

    # -- expiry (run by housekeeping) -----------------------------------------------------

    def expire(self, tx: Transaction, now: float, *,
               silent_sessions: bool = True) -> dict[str, int]:
        """In ``tx``: expire silent sessions (releasing their leases), TTL'd messages and
        idle ``x-expires`` queues; forget sessions closed long ago and publish keys older
        than the dedupe window. Returns the counts.

        ``silent_sessions=False`` (during and right after an outage, when sessions could
        not be touched): no session is expired, and every open one counts as consuming."""
        conn = tx.conn
        counts = {}
        dead = list(
            conn.execute(
                select(m.session.c.id).where(
                    m.session.c.closed_at.is_(None),
                    m.session.c.last_seen < now - self.lease_timeout,
                )
            ).scalars()
        ) if silent_sessions else []
        counts["sessions_expired"] = len(dead)
        counts["leases_released"] = self.close_sessions(tx, dead, now) if dead else 0
        if dead:
            log.warning(
                "expired %d silent consumer session(s); %d leased message(s) will be redelivered",
                len(dead),
                counts["leases_released"],
            )
        counts["messages_expired"], counts["tasks_revoked"] = self._drop_expired(conn, now)
        live_consumers = (
            select(m.consumer.c.queue)
            .join(m.session, m.session.c.id == m.consumer.c.session)
            .where(*(self._live_session(now) if silent_sessions
                     else (m.session.c.closed_at.is_(None),)))
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
        conn.execute(delete(m.session).where(m.session.c.closed_at < now - CLOSED_SESSION_KEPT))
        counts["publish_keys_expired"] = conn.execute(
            delete(m.publish_key).where(m.publish_key.c.created_at < now - self.dedup_window)
        ).rowcount
        return counts

    #: Expired messages read and dropped per expiry run when ``expired`` must see them; the
    #: rest wait for the next run (a claim skips them meanwhile).
    EXPIRED_BATCH = 5000

    def _drop_expired(self, conn: Connection, now: float) -> tuple[int, int]:
        """Delete the unleased messages whose time ran out; tell ``expired`` which ones.
        Returns (messages dropped, tasks it revoked)."""
        msg = m.message.c
        where = (msg.session.is_(None), msg.expires_at < now)
        if self.expired is None:
            return conn.execute(delete(m.message).where(*where)).rowcount, 0
        # Rows another API process's expiry holds are its own to drop: each message is told
        # of once.
        rows = conn.execute(self.sql.skip_locked(
            select(msg.id, msg.payload).where(*where).limit(self.EXPIRED_BATCH)
        )).all()
        if not rows:
            return 0, 0
        dropped = conn.execute(
            delete(m.message).where(msg.id.in_([row.id for row in rows]))
        ).rowcount
        revoked = self.expired.dropped(conn, (json.loads(row.payload) for row in rows), now)
        return dropped, revoked


class _SessionTouches:
    """Writes a session's liveness at most every ``interval`` seconds per process.

    A long-polling worker asks several times a second when busy; writing
    ``last_seen`` each time would cost a database write per poll for nothing.
    """

    def __init__(self, write: Callable[..., None], interval: float, *,
                 capacity: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self.write = write
        self.interval = interval
        self.capacity = capacity
        self.clock = clock  # the kernel's: the reaper holds last_seen against it
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, tuple[tuple, float]] = OrderedDict()

    def stale(self, sessions: Iterable[str], older_than: float) -> list[str]:
        """Of ``sessions``, those written here more than ``older_than`` seconds ago."""
        now = self.clock()
        with self._lock:
            return [session for session in sessions
                    if (seen := self._seen.get(session)) is not None
                    and now - seen[1] > older_than]

    def written(self, sessions: Iterable[str], when: float) -> None:
        with self._lock:
            for session in sessions:
                seen = self._seen.get(session)
                if seen is not None:
                    self._seen[session] = (seen[0], when)

    def touch(self, session: str, principal: str, queues: list[str],
              node: dict | None = None) -> None:
        now = self.clock()
        key = (principal, frozenset(queues), json.dumps(node, sort_keys=True) if node else None)
        with self._lock:
            last = self._seen.get(session)
        if last is not None and last[0] == key and now - last[1] < self.interval:
            return
        self.write(session, principal, key[1], node)
        with self._lock:
            self._seen[session] = (key, now)
            self._seen.move_to_end(session)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)

    def forget(self, session: str) -> None:
        with self._lock:
            self._seen.pop(session, None)


class _KnownEmpty:
    """Per session: the queues and capacity of its last claim that found nothing, with what
    the process had heard of those queues then (at most ``trust_for`` seconds ago).

    Nothing fitting ``max_slots`` free slots means nothing fits fewer: a consume asking
    with less room (a worker that was just handed a task) knows as much."""

    def __init__(self, trust_for: float, *, capacity: int = 100_000) -> None:
        self.trust_for = trust_for
        self.capacity = capacity
        self._lock = threading.Lock()
        self._known: OrderedDict[str, tuple[tuple, tuple, float]] = OrderedDict()

    def note(self, session: str, asked: tuple, heard: tuple) -> None:
        with self._lock:
            self._known[session] = (asked, heard, time.monotonic())
            self._known.move_to_end(session)
            while len(self._known) > self.capacity:
                self._known.popitem(last=False)

    def knows(self, session: str, asked: tuple, heard: tuple) -> bool:
        with self._lock:
            known = self._known.get(session)
        return (known is not None and _within(asked, known[0]) and known[1] == heard
                and time.monotonic() - known[2] < self.trust_for)

    def forget(self, sessions: Iterable[str]) -> None:
        with self._lock:
            for session in sessions:
                self._known.pop(session, None)


def _within(asked: tuple, known: tuple) -> bool:
    """Whether a claim with ``asked`` (queues, max_slots, total_slots) can find only what a
    claim with ``known`` could: the same queues and size, no more free slots."""
    queues, max_slots, total_slots = asked
    known_queues, known_max, known_total = known
    return (queues == known_queues and total_slots == known_total
            and (known_max is None or (max_slots is not None and max_slots <= known_max)))
