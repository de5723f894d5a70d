"""Expired Celery tasks end for their callers, as they do on Redis.

The broker drops a message whose time ran out (AMQP's ``expiration``, which Celery sets
from ``expires``, or the queue's ``x-message-ttl``) before a worker took it, so no
worker ever sees the task expired and stores its state: ``AsyncResult.get()`` would
wait for ever on ``PENDING``. For a Celery task (protocol 2 ``id`` and ``task``
headers) the server stores what a worker's ``backend.mark_as_revoked`` stores:
``REVOKED`` with ``TaskRevokedError('expired')``, in Celery's JSON result format
(``result_serializer = "json"``, Celery's default), in the transaction that drops the
message, hence once. As in Celery, a ``SUCCESS`` is never overwritten, and a task sent
with ``ignore_result`` gets nothing. Other messages just go, as in AMQP.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from edge_kombu.server.jobs import RESULT_PREFIX, task_headers
from edge_kombu.server.results import Results

#: How long the stored REVOKED state is kept (seconds): Celery's default ``result_expires``.
REVOKED_RESULT_EXPIRES = 86400.0
EXPIRED = "expired"


def revoked_result(headers: dict, reason: str, now: float) -> bytes:
    """The result meta Celery's key/value backends store for a revoked task, JSON-encoded."""
    meta = {
        "status": "REVOKED",
        # Celery's prepare_exception() for serializers that cannot carry exceptions.
        "result": {"exc_type": "TaskRevokedError", "exc_message": [reason],
                   "exc_module": "celery.exceptions"},
        "traceback": None,
        "children": [],
        "date_done": datetime.fromtimestamp(now, UTC).isoformat(),
        "task_id": headers["id"],
    }
    if headers.get("group"):
        meta["group_id"] = headers["group"]
    if headers.get("parent_id"):
        meta["parent_id"] = headers["parent_id"]
    return json.dumps(meta).encode()


def _status(value: bytes | None) -> str | None:
    try:
        meta = json.loads(value) if value is not None else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return meta.get("status") if isinstance(meta, dict) else None


class ExpiredTasks:
    """Stores REVOKED for the Celery tasks among dropped messages (the broker's
    :class:`~edge_kombu.server.broker.DroppedMessages`)."""

    def __init__(self, results: Results, *, expires: float = REVOKED_RESULT_EXPIRES) -> None:
        self.results = results
        self.expires = expires

    def dropped(self, conn: Connection, messages: Iterable[dict], now: float) -> int:
        """In ``conn``'s transaction: revoke the tasks among ``messages``; returns how many."""
        revoked = 0
        for message in messages:
            headers = task_headers(message)
            if headers is None or headers.get("ignore_result") is True:
                continue
            key = RESULT_PREFIX + headers["id"]
            if _status(self.results.read(conn, key, now)) == "SUCCESS":
                continue
            self.results.store(conn, key, revoked_result(headers, EXPIRED, now), now,
                               expires=self.expires)
            revoked += 1
        return revoked
