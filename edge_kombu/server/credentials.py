"""API credentials and their scopes: issued, listed and revoked centrally.

A row names a worker (or a pattern such as ``wisconsin-*``) with the queues it may
consume and publish to, or a central caller. Its bearer token (``ekt_…``) is stored only
as SHA-256; a row without a token gives its scope to the shared-secret or OIDC JWTs of
the workers it names. :mod:`edge_kombu.server.auth` looks credentials up on every request,
from the process's :class:`~edge_kombu.server.credential_cache.CredentialCache` when it has
one: every change gives the credentials a new generation in its transaction, so a
revocation takes effect on the next request in every process; a waiting long-poll
re-checks through :meth:`Credentials.still_valid`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase

from sqlalchemy import delete, select, update

from edge_kombu import errors
from edge_kombu.server import models as m
from edge_kombu.server.audit import Actor, AuditLog
from edge_kombu.server.credential_cache import CredentialCache, note_change
from edge_kombu.server.scopes import (
    ADMIN,
    CENTRAL,
    DEFAULT_QUEUES,
    KINDS,
    WORKER,
    loads_list,
)
from edge_kombu.server.sql import SQL
from edge_kombu.teams import check_team_name, team_queue

#: Prefix of API tokens (makes leaked tokens easy to recognise).
TOKEN_PREFIX = "ekt_"
#: A token's last use is written at most this often per process (seconds).
LAST_USE_INTERVAL = 60.0


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    """One row: who, which kind, the queues, the expiry."""

    name: str
    kind: str
    queues: tuple[str, ...]
    publish: tuple[str, ...]
    expires_at: float | None
    token_hash: str | None = None

    @property
    def central(self) -> bool:
        return self.kind == CENTRAL


def _entry(row) -> Entry:
    return Entry(row.name, row.kind, tuple(loads_list(row.queues)),
                 tuple(loads_list(row.publish)), row.expires_at, row.token_hash)


def _names(values: Iterable[str], what: str) -> list[str]:
    names = sorted({v.strip() for v in values if v.strip()})
    for name in names:
        if "\x00" in name or len(name) > m.MAX_NAME_LENGTH:
            raise errors.InvalidRequest(f"{what}: {name[:40]!r} is not a valid queue name")
    return names


def _scope_text(row: dict) -> str:
    """A token row's scope in a few words, for the audit log."""
    if row["kind"] in (CENTRAL, ADMIN):
        return row["kind"]
    parts = [f"queues {','.join(json.loads(row['queues']))}"]
    if json.loads(row["publish"]):
        parts.append(f"publish {','.join(json.loads(row['publish']))}")
    if row["expires_at"] is not None:
        parts.append(f"expires in {row['expires_at'] - row['created_at']:.0f}s")
    if row["token_hash"] is None:
        parts.append("no token")
    return "; ".join(parts)

class Credentials:
    """The credentials in the database; each method is one transaction of ``sql``."""

    def __init__(self, sql: SQL, *, audit: AuditLog | None = None,
                 cache: CredentialCache | None = None) -> None:
        self.sql = sql
        self.audit = audit or AuditLog(sql)
        #: Lookups answered from memory while no credential changed (None: always read).
        self.cache = cache
        self._lock = threading.Lock()
        self._used: dict[str, float] = {}

    def create(self, name: str, *, kind: str = WORKER, queues: Iterable[str] | None = None,
               publish: Iterable[str] = (), expires: float | None = None,
               issue_token: bool = True, actor: Actor | None = None,
               team: str | None = None) -> str | None:
        """Record ``name``'s scope and issue its token (only the hash is stored), and who
        did it in the audit log.

        A worker without ``queues`` may consume Celery's default queue ``celery``. A
        ``team``'s worker may use that team's queues only: each name in ``queues`` and
        ``publish`` means the team's queue of that name (:mod:`edge_kombu.teams`).
        ``expires`` is a lifetime in seconds. Returns the token, or None without one.
        """
        if kind not in KINDS:
            raise errors.InvalidRequest(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if not name or len(name) > m.MAX_NAME_LENGTH or "\x00" in name:
            raise errors.InvalidRequest(f"name must be 1 to {m.MAX_NAME_LENGTH} characters")
        if expires is not None and expires <= 0:
            raise errors.InvalidRequest("expires must be > 0 seconds")
        if kind == CENTRAL and (queues or publish):
            raise errors.InvalidRequest("a central credential has no queue scope (it may use all)")
        if kind == ADMIN and (queues or publish or not issue_token):
            raise errors.InvalidRequest(
                "an admin credential has no queue scope and always has a token")
        if team is not None and kind != WORKER:
            raise errors.InvalidRequest("only a worker credential belongs to a team")
        if kind == WORKER:
            queues, publish = list(DEFAULT_QUEUES if queues is None else queues), list(publish)
            if team is not None:
                try:
                    check_team_name(team)
                except ValueError as exc:
                    raise errors.InvalidRequest(f"team: {exc}") from None
                queues = [team_queue(team, q) for q in queues]
                publish = [team_queue(team, q) for q in publish]
            queues, publish = _names(queues, "queues"), _names(publish, "publish")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32) if issue_token else None
        now = self.sql.clock()
        row = {
            "name": name, "kind": kind, "created_at": now,
            "token_hash": hash_token(token) if token else None,
            "queues": json.dumps(list(queues)) if kind == WORKER else None,
            "publish": json.dumps(list(publish)) if kind == WORKER else None,
            "expires_at": None if expires is None else now + expires,
        }
        with self.sql.transaction() as tx:
            if not self.sql.insert_ignore(tx.conn, m.token, [row]):
                raise errors.Conflict(
                    f"a token for {name!r} exists already; revoke it first")
            self.audit.record(actor, "token create", name, detail=_scope_text(row),
                              conn=tx.conn)
            # A new entry may name a worker a pattern named before: for_worker changes.
            note_change(self.sql, tx.conn)
        self._changed()
        return token

    def list(self) -> list[dict]:
        """Every credential's scope, expiry and last use (never the tokens), by name."""
        t = m.token.c
        with self.sql.connect() as conn:
            rows = conn.execute(select(m.token).order_by(t.name)).all()
        return [{
            "name": row.name, "kind": row.kind,
            "queues": loads_list(row.queues), "publish": loads_list(row.publish),
            "token": row.token_hash is not None, "created_at": row.created_at,
            "expires_at": row.expires_at, "last_used_at": row.last_used_at,
        } for row in rows]

    def revoke(self, name: str, *, actor: Actor | None = None) -> None:
        with self.sql.transaction() as tx:
            if not tx.conn.execute(delete(m.token).where(m.token.c.name == name)).rowcount:
                raise errors.NotFound(f"no token for {name!r}")
            self.audit.record(actor, "token revoke", name, conn=tx.conn)
            note_change(self.sql, tx.conn)
        self._changed()

    def _changed(self) -> None:
        if self.cache is not None:
            self.cache.changed()

    # -- lookups on every request (from the cache, if any) -------------------------------

    def _cached(self, key: Hashable, read: Callable[[], object]):
        return read() if self.cache is None else self.cache.get(key, read)

    def lookup(self, token: str) -> Entry | None:
        """The entry a token was issued for, or None if unknown or revoked (not expiry)."""
        digest = hash_token(token)

        def read() -> Entry | None:
            with self.sql.connect() as conn:
                row = conn.execute(select(m.token).where(m.token.c.token_hash == digest)).first()
            return None if row is None else _entry(row)

        entry = self._cached(("token", digest), read)
        if entry is not None:
            self._note_use(entry.name)
        return entry

    def principal_for(self, token: str) -> str | None:
        """The name a token was issued for, or None if unknown or revoked."""
        entry = self.lookup(token)
        return None if entry is None else entry.name

    def for_worker(self, worker: str) -> Entry | None:
        """The worker entry naming ``worker``: its exact name, else the longest pattern."""
        entry = self._cached(("worker", worker), lambda: self._read_worker(worker))
        if entry is not None:
            self._note_use(entry.name)
        return entry

    def _read_worker(self, worker: str) -> Entry | None:
        t = m.token.c
        with self.sql.connect() as conn:
            exact = conn.execute(select(m.token).where(t.name == worker, t.kind == WORKER)).first()
            if exact is None:
                patterns = [row for row in conn.execute(select(m.token).where(
                    t.kind == WORKER, t.name.contains("*") | t.name.contains("?")
                    | t.name.contains("["))).all() if fnmatchcase(worker, row.name)]
                exact = max(patterns, key=lambda row: len(row.name), default=None)
        return None if exact is None else _entry(exact)

    def still_valid(self, name: str, token_hash: str | None, *, fresh: bool = False) -> bool:
        """Whether ``name``'s entry (with this token, if any) still exists and is unexpired.

        From the cache while no credential changed (a fresh answer: every change moves
        its stamp); without a cache, from the database (``fresh`` is kept for callers that
        say they need it)."""
        t = m.token.c
        where = [t.name == name]
        if token_hash is not None:
            where.append(t.token_hash == token_hash)

        def read() -> tuple[float | None] | None:
            with self.sql.connect() as conn:
                row = conn.execute(select(t.expires_at).where(*where)).first()
            return None if row is None else (row[0],)

        found = self._cached(("valid", name, token_hash), read)
        return found is not None and (found[0] is None or found[0] > self.sql.clock())

    def _note_use(self, name: str) -> None:
        """Write the last use, at most every :data:`LAST_USE_INTERVAL` per process."""
        now = time.monotonic()
        with self._lock:
            if now - self._used.get(name, -LAST_USE_INTERVAL) < LAST_USE_INTERVAL:
                return
            self._used[name] = now
        with self.sql.transaction() as tx:
            tx.conn.execute(update(m.token).where(m.token.c.name == name)
                            .values(last_used_at=self.sql.clock()))
