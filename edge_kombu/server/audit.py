"""Who did what: the audit log of central actions on workers and tokens.

Every admin action (maintenance on/off and its comment, shutdown, remove, queues,
concurrency, token create/revoke) is recorded with its actor, the time, the target (a worker
or token name), what changed and the admin's comment. Where the action is a database write,
the entry is written in the same transaction (pass ``conn``): an action is never done
unrecorded, nor recorded undone. The Worker hosts page and ``edge-kombu audit`` read it back.

Entries are short strings, cut to their column's size so that recording never fails
the action it records.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Connection

from edge_kombu import errors
from edge_kombu.protocol import MAX_NAME_LENGTH
from edge_kombu.server import models as m
from edge_kombu.server.sql import SQL

#: What an entry can record.
ACTIONS = ("maintenance on", "maintenance off", "maintenance comment", "shutdown", "remove",
           "queues", "concurrency", "token create", "token revoke")
#: Where an action came from: ``edge-kombu`` on the command line, the pages of
#: ``edge-kombu api``, the pages inside ``airflow api-server``, the worker's own
#: ``celery edge maintenance`` (learnt from its heartbeat), a caller that named nobody, or
#: an admin token on the management API (``/api/v1/manage/``; page or Airflow users signed
#: in there are recorded as ``page`` or ``airflow``).
VIA = ("cli", "page", "airflow", "worker", "internal", "api")

ACTOR_LENGTH = MAX_NAME_LENGTH
TEXT_LENGTH = 1024
#: Most entries one read returns.
MAX_LIMIT = 500


@dataclass(frozen=True)
class Actor:
    """Who acts: the OS user of the CLI, the signed-in page or Airflow user, a worker."""

    name: str
    via: str

    def __post_init__(self) -> None:
        if self.via not in VIA:
            raise ValueError(f"via must be one of {', '.join(VIA)}, got {self.via!r}")


#: The actor of a call that named none (only code paths outside the CLI and pages).
UNNAMED = Actor("unnamed", "internal")


def _fit(text: str | None, length: int) -> str | None:
    """``text`` as a column can hold it: no NUL (PostgreSQL refuses it), at most ``length``."""
    if text is None:
        return None
    return str(text).replace("\0", "\N{SYMBOL FOR NULL}")[:length]


class AuditLog:
    """The audit entries in the database, newest first when read."""

    def __init__(self, sql: SQL) -> None:
        self.sql = sql

    def record(self, actor: Actor | None, action: str, target: str, *,
               detail: str | None = None, comment: str | None = None,
               conn: Connection | None = None) -> None:
        """Record ``actor`` doing ``action`` on ``target`` (a worker or token name).

        ``conn``: the transaction of the action itself; without it the entry is written in
        a transaction of its own (for actions in services that take no connection).
        """
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        actor = actor or UNNAMED
        row = {
            "acted_at": self.sql.clock(),
            "actor": _fit(actor.name, ACTOR_LENGTH) or "?",
            "via": actor.via,
            "action": action,
            "target": _fit(target, MAX_NAME_LENGTH),
            "detail": _fit(detail, TEXT_LENGTH),
            "comment": _fit(comment, TEXT_LENGTH) or None,
        }
        if conn is not None:
            conn.execute(m.audit.insert().values(row))
            return
        with self.sql.transaction() as tx:
            tx.conn.execute(m.audit.insert().values(row))

    def recent(self, *, target: str | None = None, limit: int = 50) -> list[dict]:
        """The newest ``limit`` entries, of one worker or token name if ``target`` is given."""
        if not 1 <= limit <= MAX_LIMIT:
            raise errors.InvalidRequest(f"limit must be 1 to {MAX_LIMIT}, got {limit}")
        stmt = select(m.audit).order_by(m.audit.c.seq.desc()).limit(limit)
        if target is not None:
            stmt = stmt.where(m.audit.c.target == target)
        with self.sql.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        return [{
            "seq": row["seq"],
            "at": row["acted_at"],
            "actor": row["actor"],
            "via": row["via"],
            "action": row["action"],
            "target": row["target"],
            "detail": row["detail"],
            "comment": row["comment"],
        } for row in rows]
