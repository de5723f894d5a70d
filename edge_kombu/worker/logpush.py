"""Push a task's log file to the edge API while the task writes it (worker side).

A :class:`LogPusher` thread reads the file from where it stopped every ``interval``
seconds and sends what was added in ``logs/push`` requests of at most ``chunk_size``
bytes, each at its byte offset in the log the server holds. While the task runs only
whole lines are sent (a reader never sees half a JSON line, unless one line is longer
than a chunk); :meth:`LogPusher.finish` sends the rest.

Nothing is lost on a failed push: the chunk stays pending and is sent again, with the
same offset, at the next tick; the server ignores a chunk it already has. An
unreachable API is one warning per outage, never an error of the task. Once the task
ended, :meth:`finish` waits at most ``flush_timeout`` seconds; the thread then keeps
retrying in the background for up to ``give_up_after`` seconds (the log stays on the
worker's disk in any case).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace

from edge_kombu import errors
from edge_kombu.protocol import MAX_LOG_CHUNK
from edge_kombu.transport.client import EdgeClient, client_for
from edge_kombu.worker.settings import broker_client_settings

log = logging.getLogger(__name__)

#: Seconds between two reads of a running task's log file.
DEFAULT_INTERVAL = 1.0
#: Largest chunk of one ``logs/push`` request, in bytes of the log file.
DEFAULT_CHUNK_SIZE = 524288
#: Seconds the end of a task waits for its log's last chunks.
DEFAULT_FLUSH_TIMEOUT = 10.0
#: Seconds an ended task's pusher keeps retrying in the background before giving up.
DEFAULT_GIVE_UP_AFTER = 3600.0
#: Quick retries of a push that could not connect (the next tick retries anyway).
CONNECT_RETRIES = 1
#: Pooled connections of the log client (one pusher per running task).
POOL_SIZE = 4


@dataclass(frozen=True)
class PushSettings:
    enabled: bool = True
    interval: float = DEFAULT_INTERVAL
    chunk_size: int = DEFAULT_CHUNK_SIZE
    flush_timeout: float = DEFAULT_FLUSH_TIMEOUT
    give_up_after: float = DEFAULT_GIVE_UP_AFTER

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("[edge] log_push_interval must be > 0 seconds")
        # n bytes decode to at most n characters, the unit of the server's limit.
        if not 1024 <= self.chunk_size <= MAX_LOG_CHUNK:
            raise ValueError(
                f"[edge] push_log_chunk_size must be from 1024 to {MAX_LOG_CHUNK} bytes"
            )


def _whole_characters(raw: bytes) -> int:
    """Length of the longest prefix of ``raw`` that does not end inside a UTF-8 character."""
    end = len(raw)
    for lead in range(end - 1, max(end - 4, -1), -1):
        byte = raw[lead]
        if byte & 0xC0 == 0x80:
            continue  # a continuation byte: the character starts further back
        need = 1 if byte < 0xC0 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
        return end if lead + need <= end else lead
    return end


class LogPusher(threading.Thread):
    """Tails ``path`` and pushes it as the log of the task instance try ``task``."""

    def __init__(self, client, path: str | os.PathLike, task: dict,
                 settings: PushSettings = PushSettings()) -> None:
        super().__init__(name=f"edge-kombu-log-push {task.get('task_id')}", daemon=True)
        self.client = client
        self.path = os.fspath(path)
        self.task = task
        self.settings = settings
        self._finished = threading.Event()
        self._done = threading.Event()
        self._position: int | None = None  # bytes of the file handled so far
        # Created before the task starts: a file there already is from an earlier part of
        # this try on this worker (before a deferral), whose log the server may hold.
        self._existing = _size(self.path)
        self._offset = 0  # bytes of the server's log (its length once in sync)
        self._pending: tuple[int, str, int] | None = None  # offset, text, file bytes
        self._outage = False
        self._refused = False
        self.pushed_bytes = 0

    # -- public -------------------------------------------------------------------------

    def finish(self) -> bool:
        """The task ended: push the rest; True if everything reached the server in time."""
        self._finished.set()
        if not self.is_alive():
            return self._done.is_set()
        return self._done.wait(self.settings.flush_timeout)

    def run(self) -> None:
        deadline = None
        while True:
            finished = self._finished.is_set()
            stalled = self._tick(final=finished)
            if finished and not stalled:
                self._done.set()
                return
            if finished:
                deadline = deadline or time.monotonic() + self.settings.give_up_after
                if time.monotonic() > deadline:
                    log.warning("giving up pushing the log of %s: the edge API is unreachable; "
                                "the log stays in %s", self._describe(), self.path)
                    return
                time.sleep(self.settings.interval)  # waiting for the API to come back
            else:
                self._finished.wait(self.settings.interval)

    # -- one round ------------------------------------------------------------------------

    def _tick(self, *, final: bool) -> bool:
        """Push what the file gained; True if something is left (the API failed)."""
        if self._refused:
            return False
        try:
            if self._position is None:
                self._sync()
            while True:
                if self._pending is None and not self._read(final=final):
                    return False
                self._push()
        except _Stop:
            self._refused = True
            return False
        except (errors.EdgeConnectionError, errors.ServiceUnavailable, OSError) as exc:
            if not self._outage:
                log.warning("cannot push the log of %s now (%s); retrying every %ss",
                            self._describe(), exc, self.settings.interval)
            self._outage = True
            return True
        except Exception:  # noqa: BLE001 - never let the task see it; the log stays local
            log.exception("pushing the log of %s failed; it stays in %s only",
                          self._describe(), self.path)
            self._refused = True
            return False

    def _sync(self) -> None:
        """Learn the server's length (a try resumed after deferral continues its log)."""
        answer = self._call(0, "")
        self._offset = answer["length"]
        self._position = self._existing if self._offset else 0

    def _read(self, *, final: bool) -> bool:
        try:
            with open(self.path, "rb") as file:
                file.seek(self._position)
                raw = file.read(self.settings.chunk_size)
        except FileNotFoundError:
            return False  # the supervisor has not created it yet
        if not raw:
            return False
        cut = raw.rfind(b"\n") + 1
        if len(raw) == self.settings.chunk_size and not cut:
            cut = _whole_characters(raw)  # one line longer than a chunk
        if final:
            cut = len(raw)
        if cut <= 0:
            return False  # only a line still being written
        text = raw[:cut].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        self._pending = (self._offset, text, cut)
        return True

    def _push(self) -> None:
        offset, text, consumed = self._pending
        answer = self._call(offset, text)
        if self._outage:
            log.info("pushing the log of %s again", self._describe())
            self._outage = False
        self._offset = answer["length"]
        self._position += consumed
        self.pushed_bytes += consumed
        self._pending = None

    def _call(self, offset: int, data: str) -> dict:
        try:
            return self.client.call("logs/push", {**self.task, "offset": offset, "data": data})
        except (errors.EdgeConnectionError, errors.ServiceUnavailable):
            raise
        except errors.EdgeError as exc:
            if exc.status >= 500:
                raise errors.ServiceUnavailable(exc.message) from exc
            log.warning("the edge API refused the log of %s (%s); it stays in %s only",
                        self._describe(), exc, self.path)
            raise _Stop() from exc

    def _describe(self) -> str:
        task = self.task
        return (f"{task['dag_id']}.{task['task_id']} run {task['run_id']} "
                f"map {task['map_index']} try {task['try_number']}")


class _Stop(Exception):
    """The server refused the log for good (a 4xx): stop pushing it."""


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def log_client_for(app) -> EdgeClient | None:
    """A client for pushing logs, with the credential and TLS settings of ``app``'s broker
    connection (None unless it is an edge broker)."""
    settings = broker_client_settings(app)
    if settings is None:
        return None
    return client_for(replace(settings, connect_retries=CONNECT_RETRIES, pool_size=POOL_SIZE))
