"""Task logs pushed by edge workers, kept in the database (Flask-free).

A log is one task instance try, named by its Airflow coordinates. Its text is a
sequence of chunks, each stored at its UTF-8 byte offset; ``length`` is the number of
bytes stored so far. :meth:`TaskLogs.append` is idempotent by offset: a chunk sent
again (a retry whose first answer was lost) is recognised and not appended twice, so
workers may resend freely. Readers (the edge API's ``logs/read``, Airflow's log
handler) read byte ranges; a log is purged ``retention`` seconds after its last chunk.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import delete, select, update

from edge_kombu import errors
from edge_kombu.server import models as m
from edge_kombu.server.config import DEFAULT_LOG_RETENTION_DAYS
from edge_kombu.server.sql import SQL

#: Most log keys purged in one transaction.
PURGE_BATCH = 500


@dataclass(frozen=True)
class TaskInstanceTry:
    """Which log: the coordinates of an Airflow task instance try."""

    dag_id: str
    task_id: str
    run_id: str
    map_index: int = -1
    try_number: int = 1

    @classmethod
    def from_request(cls, body: dict) -> TaskInstanceTry:
        return cls(body["dag_id"], body["task_id"], body["run_id"], body["map_index"],
                   body["try_number"])

    @property
    def key(self) -> str:
        raw = "\x00".join(
            (self.dag_id, self.task_id, self.run_id, str(self.map_index), str(self.try_number))
        )
        return hashlib.sha1(raw.encode()).hexdigest()


@dataclass(frozen=True)
class LogRange:
    data: str
    offset: int  # where ``data`` starts
    next_offset: int  # where the next read continues
    length: int  # bytes stored in all (0 when the log is unknown)
    found: bool


def _utf8(data: str) -> bytes:
    if "\x00" in data:
        raise errors.InvalidRequest("data: NUL characters are not allowed in a log chunk")
    try:
        return data.encode("utf-8")
    except UnicodeEncodeError:
        raise errors.InvalidRequest("data: not valid Unicode (lone surrogate)") from None


def _char_start(raw: bytes, index: int) -> int:
    """The first UTF-8 character boundary at or after ``index``."""
    while index < len(raw) and raw[index] & 0xC0 == 0x80:
        index += 1
    return index


def _char_end(raw: bytes, index: int) -> int:
    """The last UTF-8 character boundary at or before ``index``."""
    while 0 < index < len(raw) and raw[index] & 0xC0 == 0x80:
        index -= 1
    return index


class TaskLogs:
    """Append, read and purge task logs; each method is one transaction of ``sql``."""

    def __init__(self, sql: SQL, *, retention_days: float = DEFAULT_LOG_RETENTION_DAYS) -> None:
        if retention_days <= 0:
            raise ValueError("log retention must be > 0 days")
        self.sql = sql
        self.retention = retention_days * 86400.0

    def append(self, ti: TaskInstanceTry, offset: int, data: str, *,
               ti_id: str | None = None) -> int:
        """Store ``data`` at byte ``offset`` of the log; return the log's length after it.

        ``offset`` must be the stored length (the next byte), or a chunk already stored
        (ignored); anything beyond the stored length is a conflict naming that length.
        """
        raw = _utf8(data)
        if offset < 0:
            raise errors.InvalidRequest(f"offset: must be >= 0, got {offset}")
        now = self.sql.clock()
        log_key = ti.key
        with self.sql.transaction() as tx:
            conn = tx.conn
            row = {"key": log_key, "dag_id": ti.dag_id, "task_id": ti.task_id,
                   "run_id": ti.run_id, "map_index": ti.map_index,
                   "try_number": ti.try_number, "ti_id": ti_id, "length": 0,
                   "updated_at": now}
            # Creates the log or locks its row for this transaction.
            self.sql.upsert(conn, m.task_log, row, ["key"], {"updated_at": now})
            length = conn.execute(
                select(m.task_log.c.length).where(m.task_log.c.key == log_key)
            ).scalar_one()
            end = offset + len(raw)
            if offset > length:
                raise errors.Conflict(
                    f"offset {offset} is beyond the {length} bytes stored for this log; "
                    f"push from offset {length}"
                )
            if end <= length:
                return length  # already stored: a retried push
            tail = raw[length - offset:]
            if length > offset and _char_start(tail, 0) != 0:
                raise errors.Conflict(
                    f"chunk at offset {offset} overlaps the {length} bytes stored inside a "
                    f"character; push from offset {length}"
                )
            conn.execute(m.task_log_chunk.insert().values(
                key=log_key, start=length, length=len(tail), data=tail.decode("utf-8")
            ))
            conn.execute(update(m.task_log).where(m.task_log.c.key == log_key)
                         .values(length=end, updated_at=now))
            return end

    def length(self, ti: TaskInstanceTry) -> int | None:
        """Bytes stored for the log, or None if nothing was ever pushed for it."""
        with self.sql.connect() as conn:
            return conn.execute(
                select(m.task_log.c.length).where(m.task_log.c.key == ti.key)
            ).scalar()

    def read(self, ti: TaskInstanceTry, offset: int = 0, limit: int | None = None) -> LogRange:
        """At most ``limit`` bytes of the log from byte ``offset``, cut at characters."""
        if offset < 0:
            raise errors.InvalidRequest(f"offset: must be >= 0, got {offset}")
        chunk = m.task_log_chunk.c
        with self.sql.connect() as conn:
            length = conn.execute(
                select(m.task_log.c.length).where(m.task_log.c.key == ti.key)
            ).scalar()
            if length is None:
                return LogRange("", offset, offset, 0, False)
            stop = length if limit is None else min(length, offset + limit)
            rows = conn.execute(
                select(chunk.start, chunk.data)
                .where(chunk.key == ti.key, chunk.start + chunk.length > offset,
                       chunk.start < stop)
                .order_by(chunk.start)
            ).all()
        raw = b"".join(row.data.encode("utf-8") for row in rows)
        base = rows[0].start if rows else offset
        begin = _char_start(raw, max(offset - base, 0))
        finish = _char_end(raw, max(stop - base, begin))
        data = raw[begin:finish].decode("utf-8")
        return LogRange(data, base + begin, base + finish if rows else offset, length, True)

    def purge(self, *, older_than: float | None = None) -> int:
        """Delete logs without a new chunk for ``older_than`` seconds (the retention)."""
        cutoff = self.sql.clock() - (self.retention if older_than is None else older_than)
        purged = 0
        while True:
            with self.sql.transaction() as tx:
                keys = list(tx.conn.execute(
                    select(m.task_log.c.key).where(m.task_log.c.updated_at < cutoff)
                    .limit(PURGE_BATCH)
                ).scalars())
                if not keys:
                    return purged
                tx.conn.execute(delete(m.task_log_chunk).where(m.task_log_chunk.c.key.in_(keys)))
                tx.conn.execute(delete(m.task_log).where(m.task_log.c.key.in_(keys)))
            purged += len(keys)
