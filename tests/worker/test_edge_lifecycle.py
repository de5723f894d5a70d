"""Maintenance and stop of a live edge worker through ``celery -A edge_kombu edge``."""

from __future__ import annotations

import time

import pytest

from tests.helpers import wait_for
from tests.worker.conftest import (
    heartbeats_pass,
    held_task,
    last_json,
    queue_depth,
)

pytestmark = [
    pytest.mark.timeout(180),
    # The whole lifecycle also as on Windows: thread slot pool, loopback TCP control.
    pytest.mark.parametrize("platform", ["posix", "windows"], indirect=True),
]


def test_maintenance_pending_then_mode_takes_no_task_and_off_resumes(
        edge_workers, send, tmp_path, registry, broker):
    worker = edge_workers("m1", concurrency=2)
    first, first_started, first_release = held_task(send, tmp_path, "first")
    wait_for(first_started.exists, message="first task started")

    status = last_json(worker.edge("maintenance", "on", "--comments", "disk swap").stdout)
    assert status["state"] == "maintenance pending"
    assert status["maintenance_comment"] == "disk swap"
    assert status["consuming"] == []
    wait_for(lambda: registry.get("m1@localhost")["state"] == "maintenance pending",
             message="server sees maintenance pending")
    assert registry.get("m1@localhost")["maintenance_comment"] == "disk swap"

    later_marker = tmp_path / "later.done"
    later = send("touch", str(later_marker))
    wait_for(lambda: queue_depth(broker, "remote")["ready"] == 1, message="second task queued")
    heartbeats_pass(worker)
    assert not later_marker.exists()

    first_release.touch()
    assert first.get(timeout=30) == "first.started"
    worker.wait_state("maintenance mode")
    wait_for(lambda: registry.get("m1@localhost")["state"] == "maintenance mode",
             message="server sees maintenance mode")
    heartbeats_pass(worker)
    assert not later_marker.exists()
    assert queue_depth(broker, "remote") == {"ready": 1, "leased": 0}

    switched = time.monotonic()
    status = last_json(worker.edge("maintenance", "off").stdout)
    assert status["maintenance"] is False and status["consuming"] == ["remote"]
    assert later.get(timeout=30) == "later.done"
    print(f"maintenance off -> queued task done in {time.monotonic() - switched:.2f}s")
    wait_for(lambda: registry.get("m1@localhost")["state"] == "idle", message="server idle")


def test_maintenance_wait_returns_once_running_tasks_finished(edge_workers, send, tmp_path):
    worker = edge_workers("m2", concurrency=2)
    result, started, release = held_task(send, tmp_path, "w")
    wait_for(started.exists, message="task started")
    waiting = worker.edge_popen("maintenance", "on", "--comments", "patching", "--wait")
    worker.wait_state("maintenance pending")
    wait_for(lambda: "waiting for 1 task(s)" in (waiting.stderr.readline() or ""),
             message="--wait reports the running task")
    assert waiting.poll() is None
    release.touch()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    status = last_json(out)
    assert status["state"] == "maintenance mode" and status["running"] == []
    assert result.get(timeout=30) == "w.started"


def test_stop_wait_lets_the_running_task_finish_then_exits_0(edge_workers, send, tmp_path,
                                                             registry, broker):
    worker = edge_workers("st1", concurrency=2)
    result, started, release = held_task(send, tmp_path, "s")
    wait_for(started.exists, message="task started")
    stopping = worker.edge_popen("stop", "--wait")
    worker.wait_state("terminating")
    wait_for(lambda: registry.get("st1@localhost")["state"] == "terminating",
             message="server sees terminating")
    assert stopping.poll() is None and worker.alive()

    released = time.monotonic()
    release.touch()
    out, err = stopping.communicate(timeout=60)
    exited = time.monotonic() - released
    assert stopping.returncode == 0, err
    assert last_json(out)["state"] == "terminating"
    assert "exited" in err
    assert worker.proc.wait(30) == 0
    print(f"task released -> worker exited in {exited:.2f}s")
    assert result.get(timeout=30) == "s.started"
    assert queue_depth(broker, "remote") == {"ready": 0, "leased": 0}  # acked, not redelivered
    wait_for(lambda: registry.get("st1@localhost")["state"] == "offline", message="offline")
    assert not worker.socket.exists()


def test_stop_drain_timeout_terminates_the_running_task(edge_workers, send, tmp_path, broker):
    worker = edge_workers("st2", concurrency=2)
    result, started, _ = held_task(send, tmp_path, "t")
    wait_for(started.exists, message="task started")
    begun = time.monotonic()
    done = worker.edge("stop", "--wait", "--drain-timeout", "1")
    took = time.monotonic() - begun
    assert "exited" in done.stderr
    assert worker.proc.wait(30) == 0
    print(f"stop --drain-timeout 1 returned after {took:.2f}s")
    assert wait_for(lambda: result.state == "REVOKED",
                    message="terminated task reported revoked")
    assert queue_depth(broker, "remote") == {"ready": 0, "leased": 0}


def test_sigterm_reports_terminating_while_the_task_finishes(edge_workers, send, tmp_path,
                                                             registry):
    worker = edge_workers("st3")
    result, started, release = held_task(send, tmp_path, "g")
    wait_for(started.exists, message="task started")
    worker.terminate()  # SIGTERM: Celery's own warm shutdown
    wait_for(lambda: registry.get("st3@localhost")["state"] == "terminating",
             message="server sees terminating")
    release.touch()
    assert worker.proc.wait(60) == 0
    assert result.get(timeout=30) == "g.started"
    wait_for(lambda: registry.get("st3@localhost")["state"] == "offline", message="offline")
