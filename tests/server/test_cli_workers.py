"""The real ``edge-kombu`` command steering workers in the database under test.

Workers are registered through :class:`WorkerRegistry` (what the API does on a
heartbeat); the commands run as processes with ``--db``, as an admin types them.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from edge_kombu.protocol import HEADER_POOL_SLOTS
from tests.helpers import BIN, ROOT


@pytest.fixture
def cli(db_url):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("EDGE_KOMBU_WORKER_TIMEOUT", None)

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(BIN / "edge-kombu"), *args, "--db", db_url],
                              capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
        if ok:
            assert done.returncode == 0, f"{args}: {done.stderr}"
        return done

    return run


def beat(name: str, state: str = "idle", *, queues=("celery",), slots_total: int = 4,
         **extra) -> dict:
    return {"name": name, "instance": f"{name}-instance", "state": state, "queues": list(queues),
            "slots_total": slots_total, **extra}


def fails(done: subprocess.CompletedProcess, *fragments: str) -> None:
    """A refused command: non-zero exit, one clear line on stderr, no traceback."""
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    for fragment in fragments:
        assert fragment in lines[0]


def test_workers_table_and_json(cli, registry):
    registry.heartbeat(beat("alpha", "running", queues=["celery", "gpu"], slots_used=2,
                            running=[{"id": "t1"}], versions={
                                "edge_kombu": "1.99.0",
                                "bundle dags-folder": "content-0123456789abcdef0123 (+1 older)"}))
    registry.heartbeat(beat("beta"))
    registry.request_maintenance("beta", True, "swap disk")

    header, *rows = cli("workers").stdout.splitlines()
    assert header.split() == ["NAME", "KIND", "STATE", "QUEUES", "SLOTS", "RUNNING",
                              "HEARTBEAT", "MAINTENANCE", "WARNING", "BUNDLES"]
    assert [row.split()[0] for row in rows] == ["alpha", "beta"]
    alpha, beta = rows
    assert alpha.split()[1:6] == ["edge", "running", "celery,gpu", "2/4", "1"]
    assert "1.99.0" in alpha
    assert alpha.split()[-1] == "dags-folder@content-0123456789ab"
    assert "maintenance request" in beta and "swap disk" in beta

    listed = json.loads(cli("workers", "--json").stdout)
    assert [w["name"] for w in listed] == ["alpha", "beta"]
    assert listed[0]["state"] == "running" and listed[0]["slots_used"] == 2
    assert listed[1]["maintenance"] is True and listed[1]["maintenance_comment"] == "swap disk"

    only = json.loads(cli("workers", "--json", "--state", "maintenance request").stdout)
    assert [w["name"] for w in only] == ["beta"]


def test_worker_maintenance_on_and_off(cli, registry):
    registry.heartbeat(beat("alpha"))
    done = cli("worker", "maintenance", "alpha", "on", "--comments", "kernel update")
    assert done.stdout.strip() == "alpha: maintenance request"
    worker = registry.get("alpha")
    assert worker["maintenance"] is True and worker["maintenance_comment"] == "kernel update"
    assert registry.heartbeat(beat("alpha"))["maintenance"] is True
    registry.heartbeat(beat("alpha", "maintenance mode"))

    assert cli("worker", "maintenance", "alpha", "off").stdout.strip() == "alpha: maintenance exit"
    assert registry.heartbeat(beat("alpha", "maintenance mode"))["maintenance"] is False
    fails(cli("worker", "maintenance", "alpha", "on", ok=False), "comment")


def test_worker_shutdown(cli, registry):
    registry.heartbeat(beat("alpha", "running", slots_used=1))
    assert cli("worker", "shutdown", "alpha").stdout.strip() == "alpha: shutdown request"
    assert registry.heartbeat(beat("alpha", "running"))["shutdown"] is True
    registry.deregister("alpha", "alpha-instance")
    fails(cli("worker", "shutdown", "alpha", ok=False), "alpha", "offline")


def test_worker_queues_add_and_remove(cli, registry):
    registry.heartbeat(beat("alpha", queues=["celery"]))
    done = cli("worker", "queues", "alpha", "--add", "gpu", "--add", "io")
    assert done.stdout.strip() == "alpha: queues celery,gpu,io"
    done = cli("worker", "queues", "alpha", "--remove", "celery")
    assert done.stdout.strip() == "alpha: queues gpu,io"
    assert registry.heartbeat(beat("alpha"))["queues"] == ["gpu", "io"]

    fails(cli("worker", "queues", "alpha", "--remove", "gpu", "--remove", "io", ok=False),
          "at least one queue")
    fails(cli("worker", "queues", "alpha", ok=False), "--add")
    assert registry.get("alpha")["desired_queues"] == ["gpu", "io"]


def test_worker_concurrency(cli, registry):
    registry.heartbeat(beat("alpha", slots_total=2))
    assert cli("worker", "concurrency", "alpha", "4").stdout.strip() == "alpha: concurrency 4"
    assert registry.heartbeat(beat("alpha", slots_total=2))["concurrency"] == 4
    fails(cli("worker", "concurrency", "alpha", "0", ok=False), ">= 1")
    assert registry.get("alpha")["desired_concurrency"] == 4


def test_worker_remove_refused_while_live_accepted_when_offline(cli, registry):
    registry.heartbeat(beat("alpha"))
    fails(cli("worker", "remove", "alpha", ok=False), "alpha", "idle", "offline or unknown")
    assert registry.get("alpha")["state"] == "idle"

    registry.deregister("alpha", "alpha-instance")
    assert cli("worker", "remove", "alpha").stdout.strip() == "removed alpha"
    assert registry.list() == []


@pytest.mark.parametrize("command", [
    ["worker", "maintenance", "ghost", "on", "--comments", "x"],
    ["worker", "maintenance", "ghost", "off"],
    ["worker", "shutdown", "ghost"],
    ["worker", "queues", "ghost", "--add", "q"],
    ["worker", "concurrency", "ghost", "3"],
    ["worker", "remove", "ghost"],
])
def test_unknown_worker_is_a_clear_error(cli, command):
    fails(cli(*command, ok=False), "no worker named 'ghost'")


def test_queues_warns_of_a_task_too_big_for_every_worker(cli, registry, broker):
    broker.publish("", "gpu", {"body": "huge", "headers": {HEADER_POOL_SLOTS: 3},
                              "properties": {}})
    broker.publish("", "celery", {"body": "fits", "headers": {}, "properties": {}})
    registry.heartbeat(beat("alpha", queues=["gpu", "celery"], slots_total=2))

    header, *rows = cli("queues").stdout.splitlines()
    assert header.split()[:2] == ["QUEUE", "READY"]
    by_name = {row.split()[0]: row for row in rows}
    assert set(by_name) == {"celery", "gpu"}
    assert "a task needs 3 slots; the largest worker serving this queue has 2" in by_name["gpu"]
    assert "a task needs" not in by_name["celery"]

    listed = {q["name"]: q for q in json.loads(cli("queues", "--json").stdout)}
    assert listed["gpu"]["too_big"] is True and listed["gpu"]["max_slots"] == 3
    assert listed["gpu"]["largest_worker_slots"] == 2 and listed["gpu"]["ready"] == 1
    assert listed["celery"]["too_big"] is False

    registry.heartbeat(beat("beta", queues=["gpu"], slots_total=4))
    assert "a task needs" not in cli("queues").stdout


def test_queues_warns_as_the_queues_page_of_a_queue_nobody_serves(cli, registry, broker):
    """The same words as the Queues page: tasks wait on a queue no live worker consumes
    (a worker started with -Q remote while the tasks go to celery)."""
    broker.publish("", "celery", {"body": "waits", "headers": {}, "properties": {}})
    broker.publish("", "remote", {"body": "runs", "headers": {}, "properties": {}})
    broker.declare_queue("idle")
    registry.heartbeat(beat("alpha", queues=["remote"]))

    rows = {row.split()[0]: row for row in cli("queues").stdout.splitlines()[1:]}
    assert rows["celery"].endswith("tasks wait and no live worker serves this queue")
    assert "no live worker" not in rows["remote"] and "no live worker" not in rows["idle"]
    listed = {q["name"]: q for q in json.loads(cli("queues", "--json").stdout)}
    assert (listed["celery"]["unserved"], listed["remote"]["unserved"]) == (True, False)

    # A consumer that is not a registered worker (a plain Celery worker) serves it too.
    broker.touch_session("plain-session", "plain", ["celery"])
    assert "no live worker" not in cli("queues").stdout


def test_workers_filters_comment_and_shutdown_all(cli, registry):
    """What ``airflow edge`` uses too: name pattern, served queue, the maintenance comment
    alone, every worker shut down at once."""
    registry.heartbeat(beat("site-1", queues=["remote"]))
    registry.heartbeat(beat("site-2", queues=["gpu"]))
    registry.heartbeat(beat("hq"))
    listed = json.loads(cli("workers", "--json", "--pattern", "site-*", "--queues",
                            "gpu,other").stdout)
    assert [w["name"] for w in listed] == ["site-2"]

    fails(cli("worker", "comment", "site-1", "--comments", "x", ok=False), "not in maintenance")
    registry.request_maintenance("site-1", True, "disk swap")
    assert cli("worker", "comment", "site-1", "--comments", "disk swap, reboot").stdout == (
        "site-1: maintenance request: disk swap, reboot\n")
    assert registry.get("site-1")["maintenance"] is True

    refused = cli("worker", "shutdown-all", ok=False)  # no terminal: no confirmation
    assert refused.returncode != 0 and registry.get("hq")["shutdown_requested"] is False
    assert cli("worker", "shutdown-all", "--yes").stdout == (
        "asked 3 worker(s) to shut down: hq, site-1, site-2\n")
