"""When this process last got its database back, so that an outage does not age workers.

While the API process is down or cannot reach its database, heartbeats and session
touches cannot be recorded. Judged by their rows alone, live workers would look silent
the moment the database is back, be marked ``unknown`` and have their leases released:
their tasks would run twice. :class:`Outages` tells the reaper when silence may be held
against a worker: not while the database is failing, and not before a grace after this
process last recovered from failing to reach it (its start counts as a recovery), long
enough for every live worker to heartbeat and consume again.

Failures are noted by the reaper (a job raising a database error) and by the API's
``database_down`` error handler; the reaper's next job that reaches the database marks
the recovery.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)

#: The errors that mean the database could not be reached (answered 503 by the API).
DATABASE_DOWN = (sa_exc.OperationalError, sa_exc.InterfaceError)


class Outages:
    """Whether, at a time of ``clock``, workers and sessions may be expired for silence.

    Thread-safe: request handlers note failures while the reaper thread asks.
    """

    def __init__(self, grace: float, *, clock: Callable[[], float] = time.time) -> None:
        self.grace = grace
        self.clock = clock
        self._lock = threading.Lock()
        self._failing = False
        #: The start of this process is a recovery: nobody could heartbeat to it before.
        self._recovered_at = clock()

    def failed(self) -> None:
        """The database could not be reached just now."""
        with self._lock:
            self._failing = True

    def reached(self) -> None:
        """The database answered just now: if it was failing, it has recovered."""
        with self._lock:
            if not self._failing:
                return
            self._failing = False
            self._recovered_at = self.clock()
            until = self._recovered_at + self.grace
        log.warning("database reachable again after an outage; silent workers and sessions "
                    "are not expired before %s (grace %g s)",
                    datetime.fromtimestamp(until).isoformat(sep=" ", timespec="seconds"),
                    self.grace)

    @property
    def failing(self) -> bool:
        return self._failing

    @property
    def expiry_resumes_at(self) -> float | None:
        """From when silence counts again; None while the database is failing."""
        with self._lock:
            return None if self._failing else self._recovered_at + self.grace

    def may_expire(self, now: float | None = None) -> bool:
        """Whether workers and sessions silent now may be expired for it."""
        resumes_at = self.expiry_resumes_at
        return resumes_at is not None and (self.clock() if now is None else now) >= resumes_at

    @contextmanager
    def reaching(self) -> Iterator[None]:
        """Around work that uses the database: notes whether it could reach it."""
        try:
            yield
        except DATABASE_DOWN:
            self.failed()
            raise
        self.reached()

    def watch(self, job: Callable[[], object]) -> Callable[[], object]:
        """``job`` (one that always uses the database), noting whether it reached it."""

        def watched():
            with self.reaching():
                return job()

        return watched
