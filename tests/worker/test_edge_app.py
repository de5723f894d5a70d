"""``celery -A edge_kombu worker``: start-up errors, status, heartbeats on the server."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import datetime

import pytest

from edge_kombu.protocol import VERSION
from tests.helpers import BIN, ROOT, free_port, wait_for
from tests.worker.conftest import celery_edge, edge_env

pytestmark = pytest.mark.timeout(180)


def start_worker(env: dict, queues: str = "remote",
                 name: str = "cfg") -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "celery"), "-A", "edge_kombu", "worker", "-n", f"{name}@localhost", "-Q", queues,
         "-c", "1", "-l", "info"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=90,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, *fragments: str) -> None:
    assert done.returncode != 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("edge-kombu worker")]
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert " ready." not in done.stdout + done.stderr


def test_missing_api_url(tmp_path, token):
    done = start_worker(edge_env(tmp_path, None, token))
    assert_one_line_error(done, "no edge API URL", "AIRFLOW__EDGE__API_URL", "api_url")


def test_unreachable_api(tmp_path, token):
    url = f"http://127.0.0.1:{free_port()}"
    done = start_worker(edge_env(tmp_path, url, token))
    assert_one_line_error(done, "cannot reach the edge API", url)


def test_missing_credential(tmp_path, api):
    done = start_worker(edge_env(tmp_path, api.url, None))
    assert_one_line_error(done, "no credential", "EDGE_KOMBU_TOKEN")


def test_rejected_credential(tmp_path, api):
    done = start_worker(edge_env(tmp_path, api.url, "not-a-valid-token"))
    assert_one_line_error(done, "rejected the credential", "EDGE_KOMBU_TOKEN")


def test_token_file_and_api_url_from_airflow_cfg(tmp_path, api, token):
    """The settings Airflow users know: [edge] api_url and a token file in airflow.cfg."""
    home = tmp_path / "airflow"
    home.mkdir()
    (tmp_path / "token").write_text(token + "\n")
    (home / "airflow.cfg").write_text(
        f"[edge]\napi_url = {api.url}\ntoken_file = {tmp_path / 'token'}\n"
    )
    env = edge_env(tmp_path, None, None)
    probe = ("from edge_kombu.celery import app; import json; print(json.dumps("
             "[app.conf.broker_url, app.conf.broker_transport_options, app.conf.worker_pool]))")
    done = subprocess.run([str(BIN / "python"), "-c", probe], env=env, cwd=ROOT,
                          capture_output=True, text=True, check=True)
    # The file goes along so that a rotated token (an OIDC identity token) is read again.
    options = {"token": token, "token_file": str(tmp_path / "token")}
    assert json.loads(done.stdout) == [f"edge+{api.url}", options,
                                       "edge_kombu.worker.pool:SlotPool"]


def test_queue_name_too_long(tmp_path, api, token):
    done = start_worker(edge_env(tmp_path, api.url, token), queues="remote," + "q" * 257)
    assert_one_line_error(done, "257 characters", "256")


def test_name_already_online(edge_workers, env_for, api):
    edge_workers("twin")
    done = start_worker(env_for(api), name="twin")
    assert_one_line_error(done, "already online", "-n")


def test_no_worker_running_is_a_clear_error(tmp_path, token):
    done = celery_edge(edge_env(tmp_path, None, token), "status")
    assert done.returncode != 0
    assert "no edge worker is running on this host" in done.stderr
    assert "Traceback" not in done.stderr


def test_status_json_and_heartbeat_on_server(edge_workers, registry, send, tmp_path, db_url):
    worker = edge_workers("s1", concurrency=3)
    status = json.loads(worker.edge("status").stdout)
    assert status["name"] == "s1@localhost"
    assert status["state"] == "idle"
    assert status["queues"] == ["remote"]
    assert (status["slots_total"], status["slots_used"], status["slots_free"]) == (3, 0, 3)
    assert status["running"] == []
    assert status["maintenance"] is False and status["maintenance_comment"] is None
    assert status["version_warning"] is None
    assert status["api_reachable"] is True
    # Times as the rest of the CLI shows them, not Unix timestamps.
    beat = datetime.fromisoformat(status["last_heartbeat"])
    assert beat.tzinfo is not None and abs(time.time() - beat.timestamp()) < 60
    assert status["heartbeat_age"].endswith("s")

    row = wait_for(lambda: (r := registry.get("s1@localhost"))["state"] == "idle" and r,
                   message="worker row idle")
    assert row["queues"] == ["remote"] and row["slots_total"] == 3
    assert row["versions"]["edge_kombu"] == VERSION and row["versions"]["celery"].startswith("5.")
    assert {"cpu_percent", "memory_percent", "memory_used_bytes", "disk_free_bytes",
            "load_avg"} <= set(row["sysinfo"])
    listed = subprocess.run([str(BIN / "edge-kombu"), "workers", "--json", "--db", db_url],
                            capture_output=True, text=True, check=True)
    assert [w["name"] for w in json.loads(listed.stdout)] == ["s1@localhost"]

    marker, release = tmp_path / "a.started", tmp_path / "a.release"
    result = send("hold", str(marker), str(release), slots=2)
    wait_for(marker.exists, message="task started")
    running = worker.wait_state("running")["running"]
    assert [(t["id"], t["name"], t["slots"]) for t in running] == [
        (result.id, "tests.edge_tasks.hold", 2)]
    assert worker.status()["slots_used"] == 2
    row = wait_for(lambda: (r := registry.get("s1@localhost"))["running"] and r,
                   message="running task on the server")
    assert row["state"] == "running" and row["slots_used"] == 2
    assert row["running"][0]["id"] == result.id and row["running"][0]["slots"] == 2
    release.touch()
    assert result.get(timeout=30) == "a.started"
    worker.wait_state("idle")


def test_several_workers_need_a_name(edge_workers):
    first = edge_workers("p1", concurrency=1)
    edge_workers("p2", concurrency=1)
    done = celery_edge(first.edge_env, "status")
    assert done.returncode != 0
    assert "pick one with -n/--name" in done.stderr and "p1@localhost" in done.stderr
    picked = celery_edge(first.edge_env, "status", "-n", "p2")
    assert picked.returncode == 0, picked.stderr
    assert json.loads(picked.stdout)["name"] == "p2@localhost"
    unknown = celery_edge(first.edge_env, "status", "-n", "nope")
    assert unknown.returncode != 0 and "no edge worker named 'nope'" in unknown.stderr


def test_other_minor_version_serves_tasks_with_a_warning(edge_workers, env_for, api, send,
                                                         tmp_path, registry):
    worker = edge_workers("v1", env=env_for(api, EDGE_KOMBU_REPORTED_VERSION="1.1.0"))
    marker = tmp_path / "v.done"
    assert send("touch", str(marker)).get(timeout=30) == "v.done"
    warning = wait_for(lambda: worker.status()["version_warning"], message="version warning")
    assert "1.1.0" in warning
    assert "1.1.0" in registry.get("v1@localhost")["version_warning"]
