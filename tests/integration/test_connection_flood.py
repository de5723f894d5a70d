"""5,000 idle and half-sent connections from one source address (127.0.0.2, reopened as
fast as the server closes them) against an API server with its default settings, while a
real Celery worker keeps taking tasks: dispatch stays fast and new clients are served.

Stock gunicorn gevent (2,000 connections, a silent connection held for the keep-alive
time) answered nobody for the whole flood."""

from __future__ import annotations

import resource
import statistics
import time

import pytest

from tests.helpers import wait_for
from tests.server.flood import ConnectionFlood, probe_health

# Connection handling and rate limits do not depend on the database: they run once.
pytestmark = pytest.mark.sqlite_only

FLOOD = 5000
MEASURE_SECONDS = 30.0


HARD_FILES_LIMIT = resource.getrlimit(resource.RLIMIT_NOFILE)[1]


@pytest.mark.skipif(HARD_FILES_LIMIT != resource.RLIM_INFINITY and HARD_FILES_LIMIT < FLOOD + 1000,
                    reason="the hard limit on open files is below what the flood needs")
def test_a_connection_flood_from_one_address_does_not_lock_out_workers(
        api, broker_url, worker_factory, celery_client):
    worker_factory(broker_url, name="flooded")
    assert celery_client.send_task("tests.celery_app.started_at").get(timeout=30)

    dispatch: list[float] = []  # publish to task start (s)
    new_clients: list[float | None] = []  # a fresh connection's health check (s), None: no answer
    with ConnectionFlood("127.0.0.1", api.port, source="127.0.0.2", connections=FLOOD,
                         seconds=MEASURE_SECONDS + 60) as flood:
        wait_for(lambda: flood.opened >= FLOOD, timeout=30, message=f"{FLOOD} connections")
        until = time.monotonic() + MEASURE_SECONDS
        while time.monotonic() < until:
            sent = time.time()
            started = celery_client.send_task("tests.celery_app.started_at").get(timeout=10)
            dispatch.append(started - sent)
            new_clients.append(probe_health(api.url, timeout=2.0))
        assert flood.running, "the flood ended before the measurement"
        pressure = (flood.opened, flood.closed_by_server, flood.peak_open)

    assert len(dispatch) >= 20
    p99 = statistics.quantiles(dispatch, n=100, method="inclusive")[98]
    answered = [took for took in new_clients if took is not None]
    print(f"\nflood: opened {pressure[0]} connections, {pressure[1]} closed by the server, "
          f"{pressure[2]} open at once at most; {len(dispatch)} tasks: dispatch median "
          f"{statistics.median(dispatch):.3f} s, p99 {p99:.3f} s, max {max(dispatch):.3f} s; "
          f"new clients answered {len(answered)}/{len(new_clients)}, slowest "
          f"{max(answered, default=float('nan')):.3f} s")
    assert p99 < 1.0, sorted(dispatch)[-5:]
    assert len(answered) == len(new_clients), new_clients
    assert max(answered) < 2.0
