"""Who did what, end to end: a real API server process, a worker heartbeating over HTTP,
the real ``edge-kombu`` command and the pages' actions, all read back with
``edge-kombu audit`` and on the Worker hosts page."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import time

import pytest
import requests

from tests.helpers import BIN, ROOT
from tests.server.helpers import PRINCIPAL, error_message, post

pytestmark = pytest.mark.timeout(240)

ADMIN, VIEWER = ("admin", "admin-secret-1"), ("viewer", "viewer-secret-1")
#: The worker: named as its token's holder, which is all a worker token may heartbeat as.
NAME = PRINCIPAL


@pytest.fixture
def api(api_factory):
    return api_factory(env={"EDGE_KOMBU_UI_ADMIN": ":".join(ADMIN),
                            "EDGE_KOMBU_UI_VIEWER": ":".join(VIEWER)})


@pytest.fixture
def cli(db_url):
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run(*args: str) -> str:
        done = subprocess.run([str(BIN / "edge-kombu"), *args, "--db", db_url],
                              capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
        assert done.returncode == 0, f"{args}: {done.stderr}"
        return done.stdout

    return run


def heartbeat(api, token: str, state: str = "idle") -> dict:
    answer = post(api, "worker/heartbeat", {
        "name": NAME, "instance": "instance-e2e", "state": state, "queues": ["celery"],
        "slots_total": 2}, token=token)
    assert answer.status_code == 200, answer.text
    return answer.json()


def audit(cli, *args: str) -> list[dict]:
    """The entries of worker actions (the ``token`` fixture's "token create" of the same
    name aside)."""
    return [entry for entry in json.loads(cli("audit", "--json", *args))
            if not entry["action"].startswith("token ")]


def page_csrf(api) -> str:
    page = requests.get(f"{api.url}/ui/workers", auth=ADMIN, timeout=10)
    assert page.status_code == 200
    return page.text.split('name="csrf-token" content="')[1].split('"')[0]


def act(api, action: str, body: dict, csrf: str) -> requests.Response:
    return requests.post(f"{api.url}/ui/actions/workers/{NAME}/{action}", json=body, auth=ADMIN,
                         headers={"X-CSRF-Token": csrf}, timeout=10)


def test_cli_and_page_actions_are_recorded_and_shown(api, token, cli):
    heartbeat(api, token)
    before = time.time()
    assert cli("worker", "maintenance", NAME, "on", "--comments", "kernel update").strip() \
        == f"{NAME}: maintenance request"
    cli("worker", "concurrency", NAME, "3", "--actor", "carol", "--comments", "more cores")
    after = time.time()
    answer = heartbeat(api, token)  # the server process hands the requests to the worker
    assert answer["maintenance"] is True and answer["concurrency"] == 3

    concurrency, maintenance = audit(cli)
    assert maintenance["actor"] == getpass.getuser() and maintenance["via"] == "cli"
    assert maintenance["action"] == "maintenance on" and maintenance["target"] == NAME
    assert maintenance["comment"] == "kernel update"
    assert before <= maintenance["at"] <= concurrency["at"] <= after
    assert (concurrency["actor"], concurrency["action"], concurrency["detail"],
            concurrency["comment"]) == ("carol", "concurrency", "2 -> 3 slots", "more cores")

    # The pages record the signed-in user, in the API server process.
    csrf = page_csrf(api)
    done = act(api, "maintenance", {"on": False, "comment": "kernel updated"}, csrf)
    assert done.status_code == 200, done.text
    refused = act(api, "concurrency", {"concurrency": 4, "comment": 7}, csrf)
    assert "comment" in error_message(refused, 400)
    newest = audit(cli, "--worker", NAME)
    assert [(e["actor"], e["via"], e["action"]) for e in newest] == [
        ("admin", "page", "maintenance off"), ("carol", "cli", "concurrency"),
        (getpass.getuser(), "cli", "maintenance on")]
    assert newest[0]["comment"] == "kernel updated"
    assert audit(cli, "--worker", "someone-else") == []

    header, *rows = cli("audit", "--limit", "2").splitlines()
    assert header.split() == ["TIME", "(UTC)", "ACTOR", "ACTION", "TARGET", "DETAIL", "COMMENT"]
    assert len(rows) == 2 and "admin (page)" in rows[0] and "maintenance off" in rows[0]
    assert "carol (cli)" in rows[1] and "2 -> 3 slots" in rows[1] and "more cores" in rows[1]

    # The Worker hosts page shows them, to viewers too, and one worker's with ?worker=.
    shown = requests.get(f"{api.url}/ui/workers", params={"worker": NAME}, auth=VIEWER,
                         timeout=10)
    assert shown.status_code == 200
    recent = shown.text.split('<table id="audit">')[1]
    assert recent.index("kernel updated") < recent.index("more cores") \
        < recent.index("kernel update<")
    assert "carol" in recent and "2 -&gt; 3 slots" in recent and "admin" in recent
    partial = requests.get(f"{api.url}/ui/workers", headers={"X-Partial": "1"}, auth=VIEWER,
                           timeout=10)
    assert '<table id="audit">' in partial.text and "carol" in partial.text
    other = requests.get(f"{api.url}/ui/workers", params={"worker": "someone-else"},
                         auth=VIEWER, timeout=10)
    assert "No action recorded on someone-else yet" in other.text
    bad = requests.get(f"{api.url}/ui/workers", params={"worker": "a\0b"}, auth=VIEWER,
                       timeout=10)
    assert "must not contain the NUL character" in error_message(bad, 400)


def test_the_page_escapes_what_actors_wrote(api, token, cli):
    heartbeat(api, token)
    cli("worker", "maintenance", NAME, "on", "--comments", "<script>alert(1)</script>",
        "--actor", "<b>mallory</b>")
    page = requests.get(f"{api.url}/ui/workers", auth=VIEWER, timeout=10).text
    assert "<script>alert(1)</script>" not in page and "<b>mallory</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "&lt;b&gt;mallory" in page
