"""The management REST API over HTTP on the database under test: who may call it, tokens,
jobs and queues (the live-worker actions are in tests/worker/test_manage_api.py)."""

from __future__ import annotations

import base64
import subprocess

import pytest
import requests

from tests.helpers import BIN
from tests.server.helpers import error_message, post
from tests.server.test_cli_workers import beat
from tests.server.test_jobs import task_message

pytestmark = pytest.mark.timeout(120)

ADMIN, VIEWER = ("alice", "alice-secret"), ("vic", "vic-secret")


@pytest.fixture
def api(api_factory):
    return api_factory(env={"EDGE_KOMBU_UI_ADMIN": ":".join(ADMIN),
                            "EDGE_KOMBU_UI_VIEWER": ":".join(VIEWER)})


def call(api, method: str, path: str, credential: str | None = None, *, basic=None,
         **kwargs) -> requests.Response:
    headers = kwargs.pop("headers", {})
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    if basic:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(basic).encode()).decode()
    return requests.request(method, f"{api.url}/api/v1/manage{path}", headers=headers,
                            timeout=10, **kwargs)


def test_who_may_manage(api, db_url, token, tokens, registry):
    created = subprocess.run([str(BIN / "edge-kombu"), "token", "create", "--admin", "ops",
                              "--db", db_url], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stderr
    admin = created.stdout.strip()
    registry.heartbeat(beat("w1"))
    assert [w["name"] for w in call(api, "GET", "/workers", admin).json()["workers"]] == ["w1"]

    # A central (scheduler) token moves tasks but does not manage: separation of duties.
    message = error_message(call(api, "GET", "/workers", token), 403)
    assert "is a central token" in message and "token create --admin NAME" in message
    worker = tokens.create("site-*", queues=["celery"])
    assert "is a worker token" in error_message(call(api, "GET", "/workers", worker), 403)
    assert "admin token" in error_message(call(api, "GET", "/workers"), 401)
    # An admin token may use no broker route.
    assert "management API" in error_message(post(api, "hello", {}, token=admin), 403)

    # The pages' users: the admin acts, the viewer only reads workers, queues and jobs.
    assert call(api, "GET", "/workers/w1", basic=ADMIN).json()["worker"]["name"] == "w1"
    assert call(api, "GET", "/jobs", basic=VIEWER).status_code == 200
    for method, path, body in (("POST", "/workers/w1/shutdown", {}), ("GET", "/tokens", None)):
        answer = call(api, method, path, basic=VIEWER, json=body)
        assert "may look but not act" in error_message(answer, 403)
    answer = call(api, "POST", "/workers/w1/maintenance", basic=ADMIN,
                  json={"on": True, "comment": "disk"}, headers={"Origin": "http://evil.test"})
    assert "cross-origin" in error_message(answer, 403)
    answer = call(api, "POST", "/workers/w1/maintenance", basic=ADMIN, data="on=1",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert "application/json" in error_message(answer, 400)
    answer = call(api, "POST", "/workers/w1/maintenance", basic=ADMIN, json={"on": True,
                                                                           "comment": "disk"})
    assert answer.json()["worker"]["state"] == "maintenance request"
    entry = registry.audit.recent(limit=1)[0]
    assert (entry["actor"], entry["via"], entry["action"]) == ("alice", "page", "maintenance on")

    # Bounded, named refusals.
    for body, fragment in (({"on": "yes"}, "on: must be of type boolean"),
                           ({"on": True, "comment": "x" * 2000}, "comment: at most 1024"),
                           ({"on": True, "extra": 1}, "unknown field(s) 'extra'")):
        answer = call(api, "POST", "/workers/w1/maintenance", admin, json=body)
        assert fragment in error_message(answer, 400)
    assert "no worker named" in error_message(call(api, "GET", "/workers/nope", admin), 404)
    answer = call(api, "POST", "/workers/w1/maintenance-comment", admin, json={"comment": ""})
    assert "comment: at least 1 character" in error_message(answer, 400)


def test_tokens_jobs_and_queues(api, broker, tokens):
    admin = tokens.create("ops", kind="admin")
    answer = call(api, "POST", "/tokens", admin, json={"name": "site-a", "queues": ["remote"],
                                                       "expires": 3600})
    assert answer.status_code == 201, answer.text
    issued = answer.json()["token"]
    assert post(api, "hello", {}, token=issued).json()["scope"]["queues"] == ["remote"]
    listed = {t["name"]: t for t in call(api, "GET", "/tokens", admin).json()["tokens"]}
    assert listed["site-a"]["kind"] == "worker" and listed["ops"]["kind"] == "admin"
    assert "exists already" in error_message(
        call(api, "POST", "/tokens", admin, json={"name": "site-a"}), 409)
    assert call(api, "DELETE", "/tokens/site-a", admin).json() == {"revoked": "site-a"}
    assert post(api, "hello", {}, token=issued).status_code == 401
    assert "no token for" in error_message(call(api, "DELETE", "/tokens/site-a", admin), 404)

    for i in range(5):
        broker.publish("", "a" if i % 2 else "b", task_message(f"job-{i}"))
    page = call(api, "GET", "/jobs", admin, params={"queue": "b", "limit": 2}).json()
    assert [j["task_id"] for j in page["jobs"]] == ["job-4", "job-2"]
    rest = call(api, "GET", "/jobs", admin, params={"queue": "b", "before": page["next"]})
    assert [j["task_id"] for j in rest.json()["jobs"]] == ["job-0"]
    assert rest.json()["next"] is None
    for params, fragment in (({"limit": 0}, "limit: an integer 1 to 500"),
                             ({"state": "nope"}, "state: one of"),
                             ({"sort": "x"}, "unknown query parameter 'sort'")):
        assert fragment in error_message(call(api, "GET", "/jobs", admin, params=params), 400)

    queues = {q["name"]: q for q in call(api, "GET", "/queues", admin).json()["queues"]}
    assert queues["a"]["ready"] == 2 and queues["b"]["unserved"] is True
