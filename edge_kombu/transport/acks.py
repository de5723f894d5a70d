"""Acknowledgements sent from a background thread, batched while one is on the wire.

Celery acknowledges a finished task from its consumer loop, the same thread that hands
out new messages; an HTTP round trip per ack there caps a worker at one task per round
trip. Here an ack returns at once: a sender thread posts every tag queued so far in one
request, so a busy worker settles many tasks per request and an idle one without delay.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class AckSender:
    """Queue delivery tags; one daemon thread sends them in batches of up to ``max_batch``."""

    def __init__(self, send: Callable[[list[str]], None], max_batch: int) -> None:
        self._send = send
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._pending: list[str] = []
        self._sending = False
        self._thread: threading.Thread | None = None

    def add(self, tag: str) -> None:
        with self._cond:
            self._pending.append(tag)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="edge-kombu-acks",
                                                daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Wait until every tag added so far was sent (or failed and was dealt with)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._sending,
                                       timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending)
                batch = self._pending[:self._max_batch]
                del self._pending[:self._max_batch]
                self._sending = True
            try:
                self._send(batch)
            except Exception:  # noqa: BLE001 - the thread must outlive one failed send
                log.exception("acknowledging %d message(s) failed", len(batch))
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()
