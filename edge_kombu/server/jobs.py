"""Jobs history: one row per Celery task message, for the Jobs page and queue charts.

The broker, the results and the worker registry report to the history inside the
transaction that changes a job, so it costs one statement per operation and never a
round trip of its own:

=================  ==========================================================
publish            ``queued`` (task id, name, queue, slots; Airflow: DAG, task,
                   run, map index, try parsed from the workload)
claim              ``received`` by the worker whose consumer session leased it
heartbeat          ``running`` on the worker that lists it among its tasks
result stored      ``running`` (STARTED), ``success``, ``failed``, ``retry``,
                   ``revoked`` from ``celery-task-meta-<id>``'s status
ack                ``done`` when no result said how it ended (tasks without a
                   result backend; with ``acks_late`` the ack follows the result)
=================  ==========================================================

A finished job keeps its state and times when its message is delivered again (a lease
that ran out, a duplicate refused by the task or by Airflow's task-instance guard): only
a new publish of the task id (``retry()``) starts it over; a repeated publish within the
dedupe window is not one (see :func:`~edge_kombu.server.broker.publish_key`).

Only messages that carry Celery's protocol 2 ``id`` and ``task`` headers are jobs;
remote control, events and replies are not. Housekeeping deletes finished jobs after
``EDGE_KOMBU_JOB_RETENTION`` seconds (:data:`~edge_kombu.server.config.DEFAULT_JOB_RETENTION`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable, Sequence

from sqlalchemy import and_, bindparam, delete, func, or_, select, update
from sqlalchemy.engine import Connection

from edge_kombu.protocol import AIRFLOW_TASK_NAME, MAX_KEY_LENGTH
from edge_kombu.server import models as m
from edge_kombu.server.sql import SQL

log = logging.getLogger(__name__)

#: Result keys of Celery's key/value backends.
RESULT_PREFIX = "celery-task-meta-"
#: Page size of the Jobs page and its largest allowed value.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

#: Queues Celery makes for itself (remote control, events, replies).
_INTERNAL_QUEUE_MARKS = (".pidbox", "celeryev.", ".reply.celery.")

STATES = ("queued", "received", "running", "retry", "success", "failed", "revoked", "done")
FINAL = ("success", "failed", "revoked", "done")
#: Final states a result said: nothing but a new publish of the task id changes them (a
#: redelivery, or a duplicate the task or Airflow refused, must not rewrite the history).
#: ``done`` (acked, outcome unknown) still takes the result that follows an early ack.
_OUTCOMES = ("success", "failed", "revoked")
_UNFINISHED = ("queued", "received", "running", "retry")
_CELERY_STATES = {
    "STARTED": "running",
    "RETRY": "retry",
    "SUCCESS": "success",
    "FAILURE": "failed",
    "REVOKED": "revoked",
}


def task_headers(message: dict) -> dict | None:
    """Celery protocol 2 task headers of a message, or None for any other message."""
    headers = message.get("headers") or {}
    task_id, name = headers.get("id"), headers.get("task")
    if not isinstance(task_id, str) or not isinstance(name, str):
        return None
    if not task_id or len(task_id) > MAX_KEY_LENGTH:
        return None
    return headers


def airflow_ti(message: dict) -> dict:
    """DAG id, task id, run id, map index and try of an Airflow workload message."""
    try:
        body = message["body"]
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        ti = json.loads(args[0])["ti"]
        return {
            "dag_id": _text(ti["dag_id"]),
            "ti_task_id": _text(ti["task_id"]),
            "run_id": _text(ti["run_id"]),
            "map_index": _int32(ti.get("map_index", -1)),
            "try_number": _int32(ti.get("try_number") or 0) or None,
        }
    except (KeyError, IndexError, TypeError, ValueError, OverflowError, RecursionError) as exc:
        # A workload we cannot read still runs; it only shows without its Airflow detail.
        log.debug("no Airflow task instance in message: %s", exc)
        return {}


def _text(value) -> str:
    """A string for a 250-character text column: no NUL (PostgreSQL refuses it), no lone
    surrogate (no database stores one)."""
    text = str(value).encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", "")[:250]


def _int32(value) -> int:
    """An integer for an INTEGER column, else ValueError (the job shows without it)."""
    number = int(value)
    if not -(2**31) <= number < 2**31:
        raise ValueError(f"{number} is beyond a 32-bit integer")
    return number


def result_state(value: bytes) -> str | None:
    """The job state a stored Celery result means, if it is JSON with a known status."""
    try:
        meta = json.loads(bytes(value))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return _CELERY_STATES.get(meta.get("status")) if isinstance(meta, dict) else None


# Built once: building it cost a claim more than the database takes to run it.
_CLAIMED = (
    update(m.job)
    # Not NOT IN: an expanding parameter cannot go into executemany.
    .where(m.job.c.task_id == bindparam("tid"), and_(*(m.job.c.state != state for state in FINAL)))
    .values(state="received", message_id=bindparam("mid"), received_at=bindparam("at"),
            worker=select(m.worker.c.name).where(m.worker.c.session == bindparam("by"))
            .limit(1).scalar_subquery())
)


class JobHistory:
    """Writes the history inside other services' transactions; reads it for the pages.

    Serves as the broker's :class:`~edge_kombu.server.broker.History` and the results'
    :class:`~edge_kombu.server.results.ResultHistory`.
    """

    def __init__(self, sql: SQL) -> None:
        self.sql = sql

    # -- writes, each inside the caller's transaction ---------------------------------------

    def published(self, conn: Connection, queues: Sequence[str], message: dict,
                  slots: int, now: float) -> None:
        headers = task_headers(message)
        if headers is None or not queues:
            return
        row = {
            "task_id": headers["id"],
            "name": headers["task"][:256],
            "queue": queues[0],
            "slots": slots,
            "state": "queued",
            "worker": None,
            "message_id": None,
            "queued_at": now,
            "received_at": None,
            "started_at": None,
            "finished_at": None,
        }
        if headers["task"] == AIRFLOW_TASK_NAME:
            row.update(airflow_ti(message))
        # A retry republishes under the same id: the job starts over where it is listed.
        self.sql.upsert(conn, m.job, row, ["task_id"])

    def claimed(self, conn: Connection, session: str, leased: Iterable[tuple[int, dict]],
                now: float) -> None:
        rows = [
            {"tid": headers["id"], "mid": ident, "at": now, "by": session}
            for ident, message in leased
            if (headers := task_headers(message)) is not None
        ]
        if rows:
            conn.execute(_CLAIMED, rows)

    def acked(self, conn: Connection, message_ids: Sequence[int], now: float) -> None:
        if message_ids:
            conn.execute(
                update(m.job)
                .where(m.job.c.message_id.in_(message_ids), m.job.c.state.in_(_UNFINISHED))
                .values(state="done", finished_at=now)
            )

    def running(self, conn: Connection, worker: str, tasks: Sequence[dict], now: float, *,
                grantee: str | None = None) -> None:
        """Mark the jobs a heartbeat lists running on ``worker``; with a ``grantee`` (a worker
        credential) only the jobs delivered to it."""
        ids = [t["id"] for t in tasks if isinstance(t.get("id"), str)]
        if ids:
            delivered = () if grantee is None else (m.job.c.task_id.in_(
                select(m.task_grant.c.task_id).where(m.task_grant.c.principal == grantee)),)
            conn.execute(
                update(m.job)
                .where(m.job.c.task_id.in_(ids), *delivered, m.job.c.state.not_in(FINAL),
                       or_(m.job.c.state.in_(("queued", "received")), m.job.c.worker.is_(None)))
                .values(state="running", worker=worker,
                        started_at=func.coalesce(m.job.c.started_at, now))
            )

    def result_stored(self, conn: Connection, key: str, value: bytes, now: float) -> None:
        if not key.startswith(RESULT_PREFIX):
            return
        state = result_state(value)
        if state is None:
            return
        values = {"state": state}
        if state == "running":
            values["started_at"] = func.coalesce(m.job.c.started_at, now)
        elif state in FINAL:
            values["finished_at"] = now
        conn.execute(
            update(m.job)
            .where(m.job.c.task_id == key[len(RESULT_PREFIX):], m.job.c.state.not_in(_OUTCOMES))
            .values(**values)
        )

    # -- housekeeping ---------------------------------------------------------------------

    def purge(self, retention: float) -> int:
        """Delete jobs finished more than ``retention`` seconds ago."""
        with self.sql.transaction() as tx:
            return tx.conn.execute(
                delete(m.job).where(m.job.c.finished_at < self.sql.clock() - retention)
            ).rowcount

    def sample_queues(self, overview: list[dict]) -> None:
        """Record each queue's depth for this minute (idempotent across API processes).

        Celery's own queues (one per worker for remote control) are left out; samples are
        kept two hours (the charts show one).
        """
        minute = int(self.sql.clock() // 60)
        with self.sql.transaction() as tx:
            for q in overview:
                if is_internal_queue(q["name"]):
                    continue
                row = {"queue": q["name"], "minute": minute, "ready": q["ready"],
                       "oldest_age": q["oldest_age"]}
                self.sql.upsert(tx.conn, m.queue_sample, row, ["queue", "minute"])
            old = m.queue_sample.c.minute < minute - 120
            tx.conn.execute(delete(m.queue_sample).where(old))

    # -- reads ----------------------------------------------------------------------------

    def page(self, *, state: str | None = None, queue: str | None = None,
             worker: str | None = None, text: str | None = None, before: int | None = None,
             limit: int = DEFAULT_PAGE_SIZE) -> dict:
        """Newest jobs first, ``limit`` per page; ``before`` is the previous page's cursor."""
        stmt = self.page_query(state=state, queue=queue, worker=worker, text=text,
                               before=before, limit=limit)
        with self.sql.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "jobs": [_public(row) for row in rows],
            "next": rows[-1]["seq"] if more else None,
        }

    def page_plan(self, **filters) -> str:
        """The database's plan of a filtered page (tests check that it reads an index)."""
        return self.sql.explain(self.page_query(**filters))

    @staticmethod
    def page_query(*, state=None, queue=None, worker=None, text=None, before=None,
                   limit=DEFAULT_PAGE_SIZE):
        job = m.job.c
        where = []
        if state:
            where.append(job.state == state)
        if queue:
            where.append(job.queue == queue)
        if worker:
            where.append(job.worker == worker)
        if text:
            like = f"%{_escape_like(text)}%"
            where.append(or_(*(col.like(like, escape="\\") for col in (
                job.task_id, job.name, job.dag_id, job.ti_task_id, job.run_id))))
        if before is not None:
            where.append(job.seq < before)
        stmt = select(m.job)
        if where:
            stmt = stmt.where(*where)
        return stmt.order_by(job.seq.desc()).limit(limit + 1)

    def facets(self) -> dict:
        """Values for the Jobs page's filters: the queues and workers seen."""
        with self.sql.connect() as conn:
            queues = conn.execute(select(m.queue.c.name).order_by(m.queue.c.name)).scalars()
            workers = conn.execute(select(m.worker.c.name).order_by(m.worker.c.name)).scalars()
            return {"states": list(STATES), "workers": list(workers),
                    "queues": [q for q in queues if not is_internal_queue(q)]}

    def history(self, *, minutes: int = 60) -> dict[str, dict]:
        """Per queue and minute of the last ``minutes``: depth and finished jobs."""
        now = self.sql.clock()
        first = int(now // 60) - minutes + 1
        series: dict[str, dict] = {}

        def of(queue: str) -> dict:
            return series.setdefault(queue, {"ready": [None] * minutes, "done": [0] * minutes})

        sample = m.queue_sample.c
        minute_done = func.floor(m.job.c.finished_at / 60)
        with self.sql.connect() as conn:
            for queue, minute, ready in conn.execute(
                select(sample.queue, sample.minute, sample.ready).where(sample.minute >= first)
            ):
                of(queue)["ready"][minute - first] = ready
            for queue, minute, count in conn.execute(
                select(m.job.c.queue, minute_done, func.count())
                .where(m.job.c.finished_at >= first * 60)
                .group_by(m.job.c.queue, minute_done)
            ):
                index = int(minute) - first
                if 0 <= index < minutes:
                    of(queue)["done"][index] = count
        return {"first_minute": first, "queues": series}


def is_internal_queue(name: str) -> bool:
    """Whether Celery made the queue for itself (remote control, events, replies)."""
    return any(mark in name for mark in _INTERNAL_QUEUE_MARKS)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _public(row) -> dict:
    job = {k: row[k] for k in (
        "task_id", "name", "queue", "slots", "state", "worker", "queued_at", "received_at",
        "started_at", "finished_at")}
    if row["dag_id"] is not None:
        job["airflow"] = {
            "dag_id": row["dag_id"], "task_id": row["ti_task_id"], "run_id": row["run_id"],
            "map_index": row["map_index"], "try_number": row["try_number"],
        }
    return job


