"""The management REST API (``/api/v1/manage/``) acting on live edge workers: each action
sent over HTTP with an admin token reaches the worker at its next heartbeat."""

from __future__ import annotations

import pytest
import requests

from tests.helpers import wait_for

pytestmark = [pytest.mark.timeout(180), pytest.mark.sqlite_only]


class Manage:
    """JSON calls to the management API with one credential."""

    def __init__(self, api, credential: str) -> None:
        self.base = f"{api.url}/api/v1/manage"
        self.headers = {"Authorization": f"Bearer {credential}"}

    def get(self, path: str, **params) -> requests.Response:
        return requests.get(self.base + path, params=params, headers=self.headers, timeout=10)

    def post(self, path: str, body: dict) -> requests.Response:
        return requests.post(self.base + path, json=body, headers=self.headers, timeout=10)

    def ok(self, path: str, body: dict) -> dict:
        answer = self.post(path, body)
        assert answer.status_code == 200, answer.text
        return answer.json()


def test_actions_from_the_api_change_the_live_workers(edge_workers, api, tokens, send, tmp_path,
                                                      registry):
    admin = Manage(api, tokens.create("ops", kind="admin"))
    worker = edge_workers("m1", concurrency=2)
    other = edge_workers("m2", concurrency=1)
    name = worker.hostname

    listed = admin.get("/workers", name="m*", queue="remote").json()["workers"]
    assert sorted(w["name"] for w in listed) == [name, other.hostname]
    assert admin.get("/workers", queue="nowhere").json()["workers"] == []
    assert admin.get(f"/workers/{name}").json()["worker"]["slots_total"] == 2

    # Maintenance with a comment reaches the worker's own status, and back.
    answer = admin.ok(f"/workers/{name}/maintenance", {"on": True, "comment": "rack move"})
    assert answer["worker"]["maintenance"] is True
    status = worker.wait_state("maintenance mode")
    assert status["maintenance_comment"] == "rack move" and status["consuming"] == []
    # The server's row follows with the worker's next heartbeat.
    wait_for(lambda: [w["name"] for w in admin.get("/workers", state="maintenance mode")
                      .json()["workers"]] == [name], message="maintenance mode listed centrally")
    admin.ok(f"/workers/{name}/maintenance-comment", {"comment": "rack move, then disk"})
    wait_for(lambda: worker.status()["maintenance_comment"] == "rack move, then disk",
             message="new comment on the worker")
    admin.ok(f"/workers/{name}/maintenance", {"on": False})
    worker.wait_state("idle")

    # Queues change what it consumes: a task on the added queue runs on it.
    admin.ok(f"/workers/{name}/queues", {"add": ["q2"], "comment": "more work"})
    wait_for(lambda: worker.status()["consuming"] == ["remote", "q2"], message="consuming q2")
    assert send("touch", str(tmp_path / "q2.done"), queue="q2").get(timeout=30) == "q2.done"
    admin.ok(f"/workers/{name}/queues", {"remove": ["q2"]})
    wait_for(lambda: worker.status()["consuming"] == ["remote"], message="q2 cancelled")

    # Concurrency changes its slots.
    admin.ok(f"/workers/{name}/concurrency", {"concurrency": 3})
    wait_for(lambda: worker.status()["slots_total"] == 3, message="3 slots")

    # Remove refuses a live worker; a bulk shutdown makes both exit; then they can go.
    refused = admin.post(f"/workers/{name}/remove", {})
    assert refused.status_code == 409 and "shut it down first" in refused.json()["message"]
    results = admin.ok("/bulk/workers/shutdown", {"names": [name, other.hostname, "ghost"],
                                                  "comment": "end of test"})["results"]
    assert [(r["name"], r["ok"]) for r in results] == [
        (name, True), (other.hostname, True), ("ghost", False)]
    assert results[2]["error"] == "not_found"
    assert worker.proc.wait(60) == 0 and other.proc.wait(60) == 0
    wait_for(lambda: registry.get(name)["state"] == "offline", message="offline")
    assert admin.ok(f"/workers/{name}/remove", {}) == {"removed": name}
    assert admin.get(f"/workers/{name}").status_code == 404

    # The audit log names the admin token as the actor of every action.
    entries = {(e["action"], e["target"]): e for e in reversed(registry.audit.recent(limit=50))}
    for action in ("maintenance on", "maintenance comment", "maintenance off", "queues",
                   "concurrency", "shutdown", "remove"):
        assert (entries[action, name]["actor"], entries[action, name]["via"]) == ("ops", "api")
    assert entries["shutdown", other.hostname]["comment"] == "end of test"
