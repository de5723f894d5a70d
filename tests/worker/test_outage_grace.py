"""An API outage longer than the worker and lease timeouts does not age a live edge worker:
after the restart it is not marked unknown and its running acks_late task is not
redelivered (see edge_kombu/server/outages.py)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.helpers import wait_for
from tests.worker.conftest import heartbeats_pass, held_task

pytestmark = [pytest.mark.timeout(120), pytest.mark.sqlite_only]

TIMEOUT = 3.0  # worker and lease timeout, seconds
GRACE = 5.0  # after the restart: heartbeats come every second, a consume within Celery's back-off
OUTAGE = 5.0  # longer than both timeouts
SHORT_TIMEOUTS = {
    "EDGE_KOMBU_WORKER_TIMEOUT": str(TIMEOUT),
    "EDGE_KOMBU_LEASE_TIMEOUT": str(TIMEOUT),
    "EDGE_KOMBU_MAX_WAIT": "1",
    "EDGE_KOMBU_REAP_INTERVAL": "0.2",
    "EDGE_KOMBU_OUTAGE_GRACE": str(GRACE),
}


def test_api_down_longer_than_the_timeouts_neither_ages_the_worker_nor_reruns_its_task(
        api_factory, env_for, edge_workers, sender, registry, tmp_path):
    api = api_factory(env=SHORT_TIMEOUTS)
    worker = edge_workers("steady", env=env_for(api))
    result, started, release = held_task(sender(api), tmp_path, "long")
    wait_for(started.exists, message="task started")
    started.unlink()  # written again only if the task ran a second time

    api.kill(signal.SIGKILL)
    wait_for(lambda: not api.alive(), timeout=10, message="API down")
    api.stop()
    time.sleep(OUTAGE)  # the fault itself: no heartbeat, no consume, no ack gets through
    restarted = time.monotonic()
    api.start()

    def never_aged() -> bool:
        assert registry.get("steady@localhost")["state"] != "unknown", api.log()
        if time.monotonic() < restarted + GRACE:  # the server's grace began after this
            assert "silent consumer session" not in api.log(), api.log()
        return time.monotonic() > restarted + GRACE + 2 * TIMEOUT

    wait_for(never_aged, timeout=GRACE + 2 * TIMEOUT + 10, interval=0.2,
             message="grace and timeouts over")
    heartbeats_pass(worker)
    release.touch()
    assert result.get(timeout=30) == "long.started"
    log = api.log()
    assert "marked unknown" not in log
    assert "database reachable again" not in log  # a restart is no database outage
    assert "silent consumer session" not in log, "the worker's session expired"
    assert not started.exists(), "the task was redelivered and ran again"
