"""Central commands (``edge-kombu worker ...``) observed on live edge workers; restarts,
API outages and a killed worker."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from tests.helpers import BIN, wait_for
from tests.worker.conftest import heartbeats_pass, held_task, queue_depth

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def central(db_url):
    def run(*args: str) -> str:
        done = subprocess.run([str(BIN / "edge-kombu"), "worker", *args, "--db", db_url],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run


def test_central_commands_take_effect_on_the_live_worker(edge_workers, central, send, tmp_path,
                                                         registry):
    worker = edge_workers("c1", concurrency=2)
    name = worker.hostname

    central("maintenance", name, "on", "--comments", "rack move")
    status = worker.wait_state("maintenance mode")
    assert status["maintenance_comment"] == "rack move" and status["consuming"] == []
    central("maintenance", name, "off")
    worker.wait_state("idle")
    assert worker.status()["consuming"] == ["remote"]

    central("queues", name, "--add", "q2")
    wait_for(lambda: worker.status()["consuming"] == ["remote", "q2"], message="consuming q2")
    marker = tmp_path / "q2.done"
    assert send("touch", str(marker), queue="q2").get(timeout=30) == "q2.done"
    central("queues", name, "--remove", "q2")
    wait_for(lambda: worker.status()["consuming"] == ["remote"], message="q2 cancelled")

    central("concurrency", name, "3")
    wait_for(lambda: worker.status()["slots_total"] == 3, message="3 slots")
    wait_for(lambda: registry.get(name)["slots_total"] == 3, message="server sees 3 slots")
    results = [held_task(send, tmp_path, f"c{i}") for i in range(3)]
    for _, started, _ in results:  # three 1-slot tasks run at once on the grown pool
        wait_for(started.exists, message="all three tasks running")
    for result, _, release in results:
        release.touch()
        result.get(timeout=30)

    central("shutdown", name)
    assert worker.proc.wait(60) == 0
    wait_for(lambda: registry.get(name)["state"] == "offline", message="offline")


def test_maintenance_survives_a_restart(edge_workers, env_for, api, send, tmp_path, registry,
                                        broker):
    worker = edge_workers("r1")
    worker.edge("maintenance", "on", "--comments", "until the disk is replaced")
    worker.edge("stop", "--wait")
    assert worker.proc.wait(30) == 0
    wait_for(lambda: registry.get("r1@localhost")["state"] == "offline maintenance",
             message="offline maintenance")

    marker = tmp_path / "queued.done"
    queued = send("touch", str(marker))
    wait_for(lambda: queue_depth(broker, "remote")["ready"] == 1, message="task queued")
    again = edge_workers("r1")
    status = again.status()
    assert status["state"] == "maintenance mode" and status["consuming"] == []
    assert status["maintenance_comment"] == "until the disk is replaced"
    heartbeats_pass(again)
    assert not marker.exists() and queue_depth(broker, "remote")["ready"] == 1
    again.edge("maintenance", "off")
    assert queued.get(timeout=30) == "queued.done"


def test_local_control_while_the_api_is_down(edge_workers, api, send, tmp_path, registry, broker):
    worker = edge_workers("o1")
    api.stop()
    wait_for(lambda: worker.status()["api_reachable"] is False, message="API seen down")
    status = worker.edge("maintenance", "on", "--comments", "link down").stdout
    assert '"maintenance mode"' in status
    api.start()
    wait_for(lambda: worker.status()["api_reachable"] is True, timeout=60, message="API back")
    row = wait_for(lambda: (r := registry.get("o1@localhost"))["state"] == "maintenance mode"
                   and r, message="the local maintenance reached the server")
    assert row["maintenance_comment"] == "link down"
    assert worker.log().count("edge API unreachable") == 1  # one warning per outage

    # The consumer reconnected in maintenance: it takes no task until maintenance is off.
    marker = tmp_path / "after.done"
    result = send("touch", str(marker))
    wait_for(lambda: queue_depth(broker, "remote")["ready"] == 1, message="task queued")
    heartbeats_pass(worker)
    assert not marker.exists()
    worker.edge("maintenance", "off")
    assert result.get(timeout=60) == "after.done"


def test_killed_worker_becomes_unknown_and_its_task_is_redelivered(
        api_factory, env_for, edge_workers, sender, tmp_path, registry):
    api = api_factory(env={"EDGE_KOMBU_WORKER_TIMEOUT": "3", "EDGE_KOMBU_REAP_INTERVAL": "0.5"})
    env = env_for(api)
    doomed = edge_workers("k1", env=env)
    result, started, release = held_task(sender(api), tmp_path, "k")
    wait_for(started.exists, message="task started on k1")
    first_pid = started.read_text()
    killed = time.monotonic()
    doomed.kill(signal.SIGKILL)
    wait_for(lambda: registry.get("k1@localhost")["state"] == "unknown", timeout=30,
             message="k1 unknown")
    print(f"kill -9 -> unknown in {time.monotonic() - killed:.2f}s")
    edge_workers("k2", env=env)
    wait_for(lambda: started.read_text() != first_pid, timeout=60, message="redelivered to k2")
    release.touch()
    assert result.get(timeout=60) == "k.started"

