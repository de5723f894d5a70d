"""The SQL kernel of the edge API: engine, transactions, clock and every dialect difference.

Each service (broker, results, credentials, workers, jobs, logs, housekeeping) takes one
:class:`SQL` and writes portable SQLAlchemy Core through it; whatever differs between
the databases is a named method here, and no other module asks which database it runs on:

==========================  ===================  ======================  ===================
                            SQLite               PostgreSQL              MySQL / MariaDB
==========================  ===================  ======================  ===================
writers                     ``BEGIN IMMEDIATE``  row locks               row locks,
                            (one at a time)                              ``READ COMMITTED``
:meth:`SQL.insert_ignore`   ``ON CONFLICT DO     ``ON CONFLICT DO        ``INSERT IGNORE``
                            NOTHING``            NOTHING``
:meth:`SQL.upsert`          ``ON CONFLICT DO     ``ON CONFLICT DO        ``ON DUPLICATE KEY
                            UPDATE``             UPDATE``                UPDATE``
:meth:`SQL.lock_rows`       (the write lock)     ``FOR UPDATE``          ``FOR UPDATE``
:meth:`SQL.lock_shared`     (the write lock)     ``FOR SHARE``           ``LOCK IN SHARE MODE``
:meth:`SQL.skip_locked`     (the write lock)     ``FOR UPDATE SKIP       ``FOR UPDATE SKIP
                                                 LOCKED``                LOCKED``
:attr:`SQL.notifies`        no                   ``LISTEN``/``NOTIFY``   no
:meth:`SQL.notify`          (nothing)            ``pg_notify``           (nothing)
:meth:`SQL.quick_scalar`    own connection       own autocommit          the pool
                                                 connection
:meth:`SQL.explain`         ``EXPLAIN QUERY      ``EXPLAIN``             ``EXPLAIN``
                            PLAN``
==========================  ===================  ======================  ===================

:meth:`SQL.transaction` yields the connection together with the wake-ups the
transaction owes: the queues that got messages and the sessions whose capacity changed.
Its :class:`Wakeup` hears of them inside the transaction (so PostgreSQL can ``NOTIFY``
on commit) and once it committed. Every service reads the time from the kernel's
``clock``, so tests move one :class:`FakeClock` for all of them.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import Column, bindparam, create_engine, event, literal
from sqlalchemy import exc as sa_exc
from sqlalchemy import select as sa_select
from sqlalchemy import text as sql_text
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.sql import ClauseElement

from edge_kombu.server.db import normalize_url

#: Databases whose row locks can skip rows another transaction holds.
_SKIP_LOCKED = ("postgresql", "mysql", "mariadb")
#: The PostgreSQL channel on which API processes tell each other of commits.
NOTIFY_CHANNEL = "edge_kombu"


# -- engines ------------------------------------------------------------------------------


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Let the DB-API stop issuing its own BEGIN; we emit BEGIN IMMEDIATE below, so
    # a transaction that reads before it writes can never lose a race for the lock.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_db_engine(url: str, *, pool_size: int = 10) -> Engine:
    """Create the engine for ``url`` with the settings each backend needs."""
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs: dict = {"pool_size": pool_size, "max_overflow": 2 * pool_size}
    if backend in ("mysql", "mariadb"):
        kwargs["pool_recycle"] = 3600
        kwargs["isolation_level"] = "READ COMMITTED"
    engine = create_engine(url, **kwargs)
    CheckoutProbe(engine).install()
    return engine


class CheckoutProbe:
    """Hands out only live pooled connections, without a round trip per checkout.

    This replaces SQLAlchemy's ``pool_pre_ping``, which sends ``SELECT 1`` on every checkout
    of a pooled connection: on PostgreSQL about 200 µs of CPU per transaction against ~10 µs
    for a typical statement of ours. It keeps the guarantee the ping gave: a connection
    the database dropped (a restart, ``pg_terminate_backend``, ``KILL``) is replaced before
    a request uses it, so no request fails on it. How, at checkout:

    * a connection just opened is used as is (so did the pre-ping);
    * one that sat in the pool for less than :attr:`idle_ping` seconds is probed with a
      ``poll()`` of its socket, a system call of a few µs: an idle connection has nothing
      to read unless its server sent something — the termination notice and end of stream
      a server sends to its clients when it shuts down or kills their session, or a TCP
      reset. Only then is the connection pinged for real; a failed ping replaces it and,
      as after a failed pre-ping (``InvalidatePoolError`` from a checkout listener), every
      other pooled connection opened before now;
    * one that sat idle longer (a peer that vanished without a word, a firewall that
      dropped an idle flow: nothing to read), or whose driver shows no socket, is pinged
      as the pre-ping did.
    """

    #: Seconds a connection may sit in the pool and still be trusted on a quiet socket.
    idle_ping = 30.0

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ping = engine.dialect.do_ping

    def install(self) -> None:
        pool = self.engine.pool
        event.listen(pool, "connect", self._connected)
        event.listen(pool, "checkin", self._checked_in)
        event.listen(pool, "checkout", self._checked_out)

    @staticmethod
    def _connected(_dbapi_connection, record) -> None:
        record.info.pop("edge_kombu_idle_since", None)

    @staticmethod
    def _checked_in(_dbapi_connection, record) -> None:
        if record is not None:
            record.info["edge_kombu_idle_since"] = time.monotonic()

    def _checked_out(self, dbapi_connection, record, _proxy) -> None:
        idle_since = record.info.pop("edge_kombu_idle_since", None)
        if idle_since is None:
            return  # opened for this checkout
        if getattr(dbapi_connection, "closed", False):
            raise sa_exc.InvalidatePoolError("the connection was closed")
        fd = _socket_fd(dbapi_connection)
        if (fd is not None and time.monotonic() - idle_since < self.idle_ping
                and not _readable(fd)):
            return
        try:
            self._ping(dbapi_connection)
        except Exception as error:  # noqa: BLE001 - any driver error: not usable
            raise sa_exc.InvalidatePoolError(f"the connection failed its ping: {error}") from error


def _socket_fd(dbapi_connection) -> int | None:
    """The file descriptor of the driver connection's socket, if the driver shows it."""
    fileno = getattr(dbapi_connection, "fileno", None)  # psycopg2
    if fileno is None:
        sock = getattr(dbapi_connection, "_sock", None)  # PyMySQL
        fileno = getattr(sock, "fileno", None)
    try:
        fd = fileno() if fileno is not None else None
    except Exception:  # noqa: BLE001 - a closed connection: no descriptor
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def _readable(fd: int) -> bool:
    """Whether the socket has something to read or an error, right now (never waits).

    The system's ``poll`` even under gevent, whose patched one would go through its hub.
    """
    monkey = sys.modules.get("gevent.monkey")
    poll = monkey.get_original("select", "poll") if monkey is not None else select.poll
    poller = poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def make_driver_cooperative(url: str) -> None:
    """Under gevent: let the database driver yield while it waits (psycopg2 does not)."""
    if make_url(url).get_backend_name() == "postgresql":
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()


# -- transactions -------------------------------------------------------------------------


class Wakeup:
    """Hears, from every transaction, that consumers may have something to do."""

    def in_transaction(self, conn: Connection, queues: set[str], sessions: set[str],
                       fresh: dict[str, tuple[int, int]] | None = None) -> None:
        """Called inside the transaction that made messages available (``fresh``: as
        for :meth:`after_commit`)."""

    def after_commit(self, queues: set[str], sessions: set[str],
                     fresh: dict[str, tuple[int, int]] | None = None) -> None:
        """Called once that transaction committed.

        ``fresh``: of ``queues``, those that just got new messages, as queue →
        (how many, fewest slots): one waiting consumer per message will do.
        """


class Transaction:
    """One transaction's connection plus the wake-ups it owes after commit."""

    __slots__ = ("conn", "queues", "sessions", "fresh", "ended")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        #: Queues whose waiting consumers should look again.
        self.queues: set[str] = set()
        #: Consumer sessions whose waiting consume should answer (their capacity changed).
        self.sessions: set[str] = set()
        #: Of ``queues``, those with new messages: queue → (how many, fewest slots).
        self.fresh: dict[str, tuple[int, int]] = {}
        #: Called with ``True`` once the transaction committed, ``False`` if it rolled back.
        self.ended: list[Callable[[bool], None]] = []

    @property
    def owes_wakeups(self) -> bool:
        return bool(self.queues or self.sessions)


class SQL:
    """The database every service works on: one engine, one clock, one wake-up hook."""

    def __init__(self, engine: Engine, *, wakeup: Wakeup | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.wakeup = wakeup if wakeup is not None else Wakeup()
        self.clock = clock
        self._dialect = engine.dialect.name
        self._skip_locked = self._dialect in _SKIP_LOCKED
        self._quick_lock = threading.Lock()
        self._quick = None  # (pid, DB-API connection) of quick_scalar on SQLite
        #: insert_ignore's and upsert's statements, built once per table and shape.
        self._statements: dict[tuple, object] = {}

    @classmethod
    def from_url(cls, url: str, *, pool_size: int = 10, **kwargs) -> SQL:
        return cls(create_db_engine(url, pool_size=pool_size), **kwargs)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One read-write transaction; commits on leaving, rolls back on an exception."""
        tx = None
        committed = False
        try:
            with self.engine.begin() as conn:
                tx = Transaction(conn)
                yield tx
                if tx.owes_wakeups:
                    self.wakeup.in_transaction(conn, tx.queues, tx.sessions, fresh=tx.fresh)
            committed = True
        finally:
            for callback in tx.ended if tx is not None else ():
                callback(committed)
        if tx.owes_wakeups:
            self.wakeup.after_commit(tx.queues, tx.sessions, fresh=tx.fresh)

    def connect(self):
        """A connection for reads that need no transaction of their own (a context manager)."""
        return self.engine.connect()

    def ping(self) -> None:
        """One round trip to the database (``SELECT 1``); raises if it cannot be reached."""
        with self.connect() as conn:
            conn.execute(sa_select(literal(1)))

    def quick_scalar(self, query: str):
        """The first value of a tiny read done very often (``query``: literal SQL), or None.

        SQLite and PostgreSQL answer it on an autocommit connection of its own, outside the
        pool: checking one out of the pool costs more than the read (on PostgreSQL its
        transaction's ``BEGIN`` and rollback are round trips of their own). Should that
        connection fail, it is dropped and the read goes through the pool, which raises
        as every other read does when the database is down. MySQL reads through the pool.
        """
        if self._dialect in ("sqlite", "postgresql"):
            with self._quick_lock:
                try:
                    cursor = self._quick_connection().cursor()
                    try:
                        cursor.execute(query)
                        row = cursor.fetchone()
                    finally:
                        cursor.close()
                    return None if row is None else row[0]
                except Exception:  # noqa: BLE001 - any driver error: retry through the pool
                    self._drop_quick()
        with self.connect() as conn:
            return conn.exec_driver_sql(query).scalar()

    def _quick_connection(self):  # under _quick_lock
        if self._quick is None or self._quick[0] != os.getpid():  # never across a fork
            raw = self.engine.raw_connection()
            connection = raw.driver_connection
            raw.detach()
            if self._dialect == "postgresql":
                connection.autocommit = True  # no transaction (nor snapshot) left open
            self._quick = (os.getpid(), connection)
        return self._quick[1]

    def _drop_quick(self) -> None:  # under _quick_lock
        if self._quick is not None and self._quick[0] == os.getpid():
            try:
                self._quick[1].close()
            except Exception:  # noqa: BLE001 - it is being dropped for failing already
                pass
        self._quick = None

    def dispose(self) -> None:
        """Close the pool's connections (the process or app is going away)."""
        with self._quick_lock:
            self._drop_quick()
        self.engine.dispose()

    # -- dialect differences ----------------------------------------------------------------

    @property
    def notifies(self) -> bool:
        """Whether the database can tell other processes of a commit (``LISTEN``/``NOTIFY``)."""
        return self._dialect == "postgresql"

    def notify(self, conn: Connection, payload: str) -> None:
        """PostgreSQL: tell every listening API process ``payload`` once ``conn``'s
        transaction commits (:class:`~edge_kombu.server.wakeup.PostgresListener`)."""
        if self.notifies:
            conn.exec_driver_sql("SELECT pg_notify(%(channel)s, %(payload)s)",
                                 {"channel": NOTIFY_CHANNEL, "payload": payload})

    def insert_ignore(self, conn: Connection, table, rows: list[dict]) -> int:
        """Insert ``rows``, skipping those whose key exists; returns how many were inserted."""
        if not rows:
            return 0
        stmt = self._statements.get(("insert_ignore", table))
        if stmt is None:
            if self._dialect == "postgresql":
                stmt = pg_insert(table).on_conflict_do_nothing()
            elif self._dialect == "sqlite":
                stmt = sqlite_insert(table).on_conflict_do_nothing()
            else:
                stmt = table.insert().prefix_with("IGNORE")
            self._statements[("insert_ignore", table)] = stmt
        return conn.execute(stmt, rows).rowcount

    def upsert(self, conn: Connection, table, row: dict, keys: Sequence[str],
               changes: dict | None = None) -> None:
        """Insert ``row``, or apply ``changes`` (default: the row's other columns) to it.

        Unlike ``INSERT IGNORE`` followed by a locking read or an ``UPDATE``, this locks an
        existing row exclusively at once: on MySQL the duplicate-key check of
        ``INSERT IGNORE`` takes a shared lock, and two transactions upgrading theirs deadlock.

        The statement is built once per shape (the row's columns, the keys, which changes
        are values and which are columns), its values bound: building an upsert and its
        cache key cost the API server more than the database takes to run it.
        """
        if changes is None:
            changes = {k: v for k, v in row.items() if k not in keys}
        # A change to a column expression is part of the statement; a value is bound.
        exprs = tuple((k, v) for k, v in changes.items() if isinstance(v, ClauseElement))
        shape = ("upsert", table, tuple(row), tuple(keys), tuple(changes), exprs)
        cacheable = all(isinstance(v, Column) for _, v in exprs)
        stmt = self._statements.get(shape) if cacheable else None
        if stmt is None:
            stmt = self._build_upsert(table, row, keys, changes)
            if cacheable:
                if len(self._statements) >= 1000:  # shapes are few; never grow without end
                    self._statements.clear()
                self._statements[shape] = stmt
        params = dict(row)
        params.update((f"set_{k}", v) for k, v in changes.items()
                      if not isinstance(v, ClauseElement))
        conn.execute(stmt, params)

    def _build_upsert(self, table, row: dict, keys: Sequence[str], changes: dict):
        values = {k: bindparam(k, type_=table.c[k].type) for k in row}
        sets = {k: v if isinstance(v, ClauseElement)
                else bindparam(f"set_{k}", type_=table.c[k].type)
                for k, v in changes.items()}
        if self._dialect == "postgresql":
            return pg_insert(table).values(values).on_conflict_do_update(
                index_elements=keys, set_=sets)
        if self._dialect == "sqlite":
            return sqlite_insert(table).values(values).on_conflict_do_update(
                index_elements=keys, set_=sets)
        return mysql_insert(table).values(values).on_duplicate_key_update(**sets)

    def lock_rows(self, stmt):
        """Lock the selected rows for writing until commit (SQLite's BEGIN IMMEDIATE does)."""
        return stmt if self._dialect == "sqlite" else stmt.with_for_update()

    def lock_shared(self, stmt):
        """Keep the selected rows from changing until commit, letting others read them too."""
        return stmt if self._dialect == "sqlite" else stmt.with_for_update(read=True)

    def skip_locked(self, stmt):
        """Lock the selected rows, passing over those another transaction holds (claims)."""
        return stmt.with_for_update(skip_locked=True) if self._skip_locked else stmt

    def explain(self, stmt) -> str:
        """The database's plan of ``stmt``, one line per row (tests and ``bench/`` read it)."""
        compiled = stmt.compile(self.engine, compile_kwargs={"literal_binds": True})
        prefix = "EXPLAIN QUERY PLAN " if self._dialect == "sqlite" else "EXPLAIN "
        with self.connect() as conn:
            return "\n".join(" ".join(map(str, row)) for row in conn.execute(
                sql_text(prefix + str(compiled))))
