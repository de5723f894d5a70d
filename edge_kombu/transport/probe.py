"""Waiting for the edge API to come back after an outage: soon, and not all at once.

A worker whose connection failed reconnects through Celery, whose back-off grows from
2 s to 30 s between attempts: after a long outage a worker would stay away for up to
half a minute once the API is back. Instead, a reconnecting connection probes the API
itself (its ``hello``, which the server answers only when its database answers too)
about once a second until it answers. Each probe waits a random 0.5–1.5 s, so a fleet
that lost the API together spreads its return over a second rather than arriving in
the same instant, and each worker is back within 2 s of the API.

A server that is starting accepts connections before it answers them: the probes that
arrived meanwhile wait in its listen backlog and are answered in one burst. A probe
that waited for it returns after a further random 0–1 s, so the reconnects that
follow do not all hit the API in the same moment either.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from edge_kombu import errors

log = logging.getLogger(__name__)

#: Bounds of the random wait between two probes (seconds).
PROBE_WAIT = (0.5, 1.5)
#: Seconds between two "still unreachable" log lines.
REPORT_EVERY = 30.0
#: Seconds the probe sleeps at a time, checking ``stopping`` in between.
SLICE = 0.1
#: Seconds one probe may take.
PROBE_TIMEOUT = 5.0
#: A probe answered after this many seconds waited for a server that was starting ...
QUEUED = 0.1
#: ... and returns after a random wait up to this long (seconds).
RETURN_SPREAD = 1.0


def hello_when_back(call: Callable[..., dict], *, stopping: Callable[[], bool],
                    timeout: float | None = None, where: str = "the edge API") -> dict:
    """``hello`` as soon as the API answers it; raise the last error once ``stopping()``
    is true or after ``timeout`` seconds (None: as long as it takes)."""
    started = time.monotonic()
    reported: float | None = None
    while True:
        sent = time.monotonic()
        try:
            answer = call("hello", retry=False, timeout=PROBE_TIMEOUT)
        except (errors.EdgeConnectionError, errors.ServiceUnavailable) as exc:  # down, 5xx, 429
            now = time.monotonic()
            if reported is None or now - reported >= REPORT_EVERY:
                log.warning("%s is unreachable (%s); probing it about once a second",
                            where, exc.message)
                reported = now
            if timeout is not None and now - started >= timeout:
                raise
            if not _wait(random.uniform(*PROBE_WAIT), stopping):
                raise
            continue
        now = time.monotonic()
        if reported is None:
            return answer  # answered at once: no outage
        if now - sent >= QUEUED:
            _wait(random.uniform(0, RETURN_SPREAD), stopping)
        log.warning("%s answers again, after %.1f s", where, time.monotonic() - started)
        return answer


def _wait(seconds: float, stopping: Callable[[], bool]) -> bool:
    """Sleep ``seconds`` unless ``stopping()`` becomes true first; False if it did."""
    deadline = time.monotonic() + seconds
    while not stopping():
        left = deadline - time.monotonic()
        if left <= 0:
            return True
        time.sleep(min(SLICE, left))
    return False
