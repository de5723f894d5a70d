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

On Redis the worker that finds the task expired also sends a ``task-revoked`` event
(``expired: true``) when its events are on. Here the server sends it, once the dropping
transaction committed, to Celery's event exchange ``celeryev`` (routing key
``task.revoked``), where Flower and ``celery events`` listen: if nobody ever declared
that exchange, no monitor listens and nothing is sent. The event's ``hostname`` is the
server's (``edge-kombu@<host>``), no worker having seen the task.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from edge_kombu import errors
from edge_kombu.server.jobs import RESULT_PREFIX, task_headers
from edge_kombu.server.results import Results

#: How long the stored REVOKED state is kept (seconds): Celery's default ``result_expires``.
REVOKED_RESULT_EXPIRES = 86400.0
EXPIRED = "expired"
#: Celery's event exchange (``event_exchange``) and the routing key of ``task-revoked``.
EVENT_EXCHANGE = "celeryev"
REVOKED_ROUTING_KEY = "task.revoked"
#: Most ``task-revoked`` events waiting to be sent; beyond, the oldest are not sent.
MAX_PENDING_EVENTS = 10_000


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


def revoked_event(task_id: str, now: float, hostname: str) -> dict:
    """A ``task-revoked`` event for an expired task, as Celery's event dispatcher sends it
    (a JSON body in kombu's virtual-transport envelope)."""
    event = {"type": "task-revoked", "uuid": task_id, "terminated": False, "signum": None,
             "expired": True, "hostname": hostname, "timestamp": now,
             "utcoffset": time.timezone // 3600, "pid": os.getpid(), "clock": 0}
    return {
        "body": base64.b64encode(json.dumps(event).encode()).decode(),
        "content-type": "application/json",
        "content-encoding": "utf-8",
        "headers": {"hostname": hostname},
        "properties": {"delivery_mode": 1, "priority": 0, "body_encoding": "base64"},
    }


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
        self.hostname = f"edge-kombu@{socket.gethostname()}"
        self._lock = threading.Lock()
        self._pending: deque[tuple[str, float]] = deque(maxlen=MAX_PENDING_EVENTS)

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
            with self._lock:
                self._pending.append((headers["id"], now))
            revoked += 1
        return revoked

    def forget(self) -> None:
        """The dropping transaction rolled back: its events are not sent."""
        with self._lock:
            self._pending.clear()

    def announce(self, publish: Callable[[str, str, dict], object]) -> int:
        """After the dropping transaction committed: send the ``task-revoked`` events with
        ``publish(exchange, routing_key, message)``; returns how many were sent."""
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        for sent, (task_id, at) in enumerate(pending):
            try:
                publish(EVENT_EXCHANGE, REVOKED_ROUTING_KEY,
                        revoked_event(task_id, at, self.hostname))
            except errors.NotFound:  # no event exchange: no monitor ever listened
                return sent
        return len(pending)
