"""Task grants: which worker credential was handed which task, and the task's group.

The broker records a grant when it leases a Celery task message (protocol 2 headers
``id`` and ``group``) to a worker-scoped session. A worker credential may then read and
write the results of its tasks, and what Celery's chords need for a group it holds a
member of (Celery's key/value backend keys, see ``KeyValueStoreBackend``):

=========================== =============================================================
``celery-task-meta-<id>``   write: a task granted to it; read: also a task of a group it
                            holds a member of (the chord's join reads every member)
``celery-taskset-meta-<g>`` read, write: a group it holds a member of
``chord-unlock-<g>``        the chord counter (incr, expire, delete): likewise
=========================== =============================================================

Task logs (Airflow task instance tries) it may push and read are those of the jobs it
was granted (the jobs history holds each task's DAG, task, run, map index and try).
Grants are purged with the jobs history's retention.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from edge_kombu.protocol import MAX_KEY_LENGTH
from edge_kombu.server import models as m
from edge_kombu.server.sql import SQL

TASK_PREFIX = "celery-task-meta-"
GROUP_PREFIX = "celery-taskset-meta-"
CHORD_PREFIX = "chord-unlock-"


def _header(headers: dict, name: str) -> str | None:
    value = headers.get(name)
    return value if isinstance(value, str) and 0 < len(value) <= MAX_KEY_LENGTH else None


class TaskGrants:
    """Records grants inside the broker's claim; answers what a credential may touch."""

    def __init__(self, sql: SQL) -> None:
        self.sql = sql

    def record(self, conn: Connection, principal: str, messages: Iterable[dict],
               now: float) -> None:
        """In the claim's transaction: grant ``principal`` the task messages leased to it."""
        rows = []
        for message in messages:
            headers = message.get("headers") or {}
            task_id = _header(headers, "id")
            if task_id is not None and isinstance(headers.get("task"), str):
                rows.append({"task_id": task_id, "principal": principal,
                             "group_id": _header(headers, "group"), "granted_at": now})
        if rows:
            self.sql.insert_ignore(conn, m.task_grant, rows)

    def refused_keys(self, principal: str, keys: Sequence[str], *, write: bool) -> list[str]:
        """The result keys of ``keys`` that ``principal`` may not read (or write)."""
        grant = m.task_grant.c
        tasks = {k[len(TASK_PREFIX):] for k in keys if k.startswith(TASK_PREFIX)}
        groups = {k[len(prefix):] for k in keys for prefix in (GROUP_PREFIX, CHORD_PREFIX)
                  if k.startswith(prefix)}
        own: set[str] = set()
        held: set[str] = set()
        with self.sql.connect() as conn:
            if tasks:
                own = set(conn.execute(select(grant.task_id).where(
                    grant.principal == principal, grant.task_id.in_(tasks))).scalars())
            if groups:
                held = set(conn.execute(select(grant.group_id).where(
                    grant.principal == principal, grant.group_id.in_(groups))).scalars())
            if not write and tasks - own:
                # Members of a group it holds a member of (granted to any credential).
                mine = select(grant.group_id).where(grant.principal == principal,
                                                    grant.group_id.is_not(None))
                own |= set(conn.execute(select(grant.task_id).where(
                    grant.task_id.in_(tasks - own), grant.group_id.in_(mine))).scalars())
        refused = []
        for key in keys:
            if key.startswith(TASK_PREFIX):
                ok = key[len(TASK_PREFIX):] in own
            elif key.startswith(GROUP_PREFIX):
                ok = key[len(GROUP_PREFIX):] in held
            elif key.startswith(CHORD_PREFIX):
                ok = key[len(CHORD_PREFIX):] in held
            else:
                ok = False
            if not ok:
                refused.append(key)
        return refused

    def holds_task_instance(self, principal: str, ti) -> bool:
        """Whether an Airflow task instance try's job was granted to ``principal``."""
        job, grant = m.job.c, m.task_grant.c
        with self.sql.connect() as conn:
            return conn.execute(
                select(job.task_id)
                .join(m.task_grant, grant.task_id == job.task_id)
                .where(grant.principal == principal, job.dag_id == ti.dag_id,
                       job.ti_task_id == ti.task_id, job.run_id == ti.run_id,
                       job.map_index == ti.map_index, job.try_number == ti.try_number)
                .limit(1)
            ).first() is not None

    def purge(self, conn: Connection, older_than: float) -> int:
        """On ``conn`` (housekeeping's transaction): forget grants older than the cutoff."""
        return conn.execute(
            delete(m.task_grant).where(m.task_grant.c.granted_at < older_than)
        ).rowcount
