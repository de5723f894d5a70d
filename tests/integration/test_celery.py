"""Stock Celery over the edge transport: real API server, real ``celery worker`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from celery import chain, chord, group
from celery.exceptions import TaskRevokedError
from kombu import Consumer, Exchange, Queue

from tests.helpers import BIN, ROOT, drain_until, wait_for

pytestmark = pytest.mark.timeout(180)


def task(client, name, *args, **options):
    return client.send_task(f"tests.celery_app.{name}", args=args, **options)


def sig(client, name, *args):
    return client.signature(f"tests.celery_app.{name}", args=args)


def celery_cli(broker_url: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, EDGE_TEST_BROKER_URL=broker_url, EDGE_TEST_RESULT_URL=broker_url,
               PYTHONPATH=str(ROOT))
    return subprocess.run([str(BIN / "celery"), "-A", "tests.celery_app", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_round_trip_and_canvas(broker_url, worker_factory, celery_client):
    worker_factory(broker_url, concurrency=4)
    assert task(celery_client, "add", 2, 3).get(timeout=20) == 5
    assert chain(sig(celery_client, "add", 1, 2), sig(celery_client, "add", 3)).apply_async().get(
        timeout=20
    ) == 6
    assert group(sig(celery_client, "add", i, i) for i in range(10)).apply_async().get(
        timeout=30
    ) == [2 * i for i in range(10)]
    header = [sig(celery_client, "add", i, 1) for i in range(6)]
    assert chord(header)(sig(celery_client, "tsum")).get(timeout=30) == sum(range(1, 7))


def test_countdown_eta_and_retry(broker_url, worker_factory, celery_client, tmp_path):
    worker_factory(broker_url)
    sent = time.time()
    started = task(celery_client, "started_at", countdown=1.5).get(timeout=30)
    assert started - sent >= 1.4
    at = datetime.now(UTC) + timedelta(seconds=1)
    assert task(celery_client, "started_at", eta=at).get(timeout=30) >= at.timestamp() - 0.05
    marker = tmp_path / "flaky"
    assert task(celery_client, "flaky", str(marker), 2).get(timeout=30) == 2
    assert marker.read_text().count("try") == 3


def test_revoke(broker_url, worker_factory, celery_client, tmp_path):
    worker_factory(broker_url)
    out = tmp_path / "revoked"
    result = task(celery_client, "stamp", str(out), "late", countdown=3)
    celery_client.control.revoke(result.id)
    wait_for(lambda: result.state == "REVOKED", timeout=20, message="REVOKED state")
    assert not out.exists()


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_expired_task_behind_busy_ones_ends_revoked(broker_url, worker_factory, celery_client,
                                                     tmp_path, pool):
    """As on Redis: the caller of a task that expired in the queue gets TaskRevokedError at
    once, not PENDING until its own timeout (the server drops the message and stores the
    task's REVOKED state itself), and a monitor (Flower, ``celery events``) hears
    ``task-revoked`` with ``expired: true``."""
    worker_factory(broker_url, concurrency=1, pool=pool)
    events: list[dict] = []
    monitor = celery_client.connection_for_read()
    listening = Queue(f"celeryev.test-{pool}", Exchange("celeryev", type="topic"), "#",
                      auto_delete=True, durable=False)
    listening(monitor.default_channel).declare()  # bound before the task can expire
    out = tmp_path / "out"
    busy = task(celery_client, "sleep_then_stamp", str(out), "busy", 4)
    wait_for(lambda: (tmp_path / "out.started").exists(), timeout=30, message="busy task start")
    late = task(celery_client, "stamp", str(out), "late", expires=1)
    sent = time.monotonic()
    with pytest.raises(TaskRevokedError, match="expired"):
        late.get(timeout=30)
    assert time.monotonic() - sent < 3.5  # well before the busy task frees the worker
    assert late.state == "REVOKED"
    assert busy.get(timeout=30) == "busy"
    assert out.read_text().split()[0::2] == ["busy"]  # the expired task never ran
    with monitor, Consumer(monitor, [listening], accept=["json"],
                           callbacks=[lambda body, msg: events.append(body)]):
        drain_until(monitor, lambda: any(e["type"] == "task-revoked" for e in events))
    revoked = [e for e in events if e["type"] == "task-revoked"]
    assert [(e["uuid"], e["expired"], e["terminated"]) for e in revoked] == [
        (late.id, True, False)]


def test_inspect_status_and_control_shutdown(broker_url, worker_factory, celery_client, tmp_path):
    worker = worker_factory(broker_url, name="ctl")
    ping = celery_cli(broker_url, "inspect", "ping", "--timeout", "5")
    assert ping.returncode == 0, ping.stderr
    assert "ctl@localhost" in ping.stdout and "pong" in ping.stdout

    running = task(celery_client, "sleep_then_stamp", str(tmp_path / "active"), "x", 3)
    wait_for((tmp_path / "active.started").exists, timeout=20, message="task start")
    active = celery_cli(broker_url, "inspect", "active", "--json", "--timeout", "5")
    assert active.returncode == 0, active.stderr
    payload = json.loads(active.stdout)
    assert [t["id"] for t in payload["ctl@localhost"]] == [running.id]

    status = celery_cli(broker_url, "status", "--timeout", "5")
    assert status.returncode == 0 and "1 node online" in status.stdout
    assert running.get(timeout=20) == "x"

    # The worker stops before it could reply, so the CLI reports no replies on any broker.
    celery_cli(broker_url, "control", "shutdown", "--timeout", "2")
    wait_for(lambda: not worker.alive(), timeout=30, message="worker exit after control shutdown")
    assert "Got shutdown from remote" in worker.log()


def test_events_from_worker(broker_url, worker_factory, celery_client):
    worker_factory(broker_url, events=True)
    seen: list[dict] = []
    ready = threading.Event()

    def capture():
        with celery_client.connection_for_read() as conn:
            receiver = celery_client.events.Receiver(
                conn, handlers={"*": seen.append}
            )
            ready.set()
            try:
                receiver.capture(limit=None, timeout=20, wakeup=True)
            except Exception:  # noqa: BLE001 - the receiver stops on timeout or should_stop
                pass

    thread = threading.Thread(target=capture, daemon=True)
    thread.start()
    ready.wait(10)
    # Wait until the receiver's queue is bound: worker heartbeats start arriving.
    wait_for(lambda: any(e["type"] == "worker-heartbeat" for e in seen), timeout=20,
             message="worker-heartbeat event")
    result = task(celery_client, "add", 20, 22)
    assert result.get(timeout=20) == 42
    wait_for(
        lambda: {"task-received", "task-started", "task-succeeded"}
        <= {e["type"] for e in seen if e.get("uuid") == result.id},
        timeout=20,
        message="task events",
    )
