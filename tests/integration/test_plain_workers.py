"""A plain ``celery -A app worker`` (not edge_kombu's app) over ``edge+http://`` is visible
in every place an edge worker is: ``edge-kombu workers``, the Worker hosts, Jobs and Queues
pages; and after an API restart it prints no "already using this process mailbox" warning
and no chained tracebacks."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import requests
from sqlalchemy import select

from edge_kombu.server import models
from tests.helpers import BIN, ROOT, wait_for
from tests.worker.test_monitoring_pages import browser, signed_in  # noqa: F401 - a fixture

pytestmark = pytest.mark.timeout(180)

ADMIN = ("admin", "admin-secret-1")
MAILBOX_WARNING = "already using this process mailbox"


@pytest.fixture
def api(api_factory):
    return api_factory(env={"EDGE_KOMBU_UI_ADMIN": ":".join(ADMIN)})


def edge_kombu(db_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "edge-kombu"), *args, "--db", db_url], capture_output=True,
                          text=True, timeout=60, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def listed(db_url: str) -> dict[str, dict]:
    done = edge_kombu(db_url, "workers", "--json")
    assert done.returncode == 0, done.stderr
    return {w["name"]: w for w in json.loads(done.stdout)}


def page(api, path: str) -> str:
    answer = requests.get(f"{api.url}{path}", auth=ADMIN, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.text


def test_a_plain_celery_worker_is_listed_on_every_page_once(
        api, broker_url, db_url, sql, worker_factory, celery_client, browser):  # noqa: F811
    worker = worker_factory(broker_url, name="plain", queues="celery,remote", concurrency=3,
                            pool="threads")
    name = worker.hostname

    def registered():
        return (w := listed(db_url).get(name)) and w["queues"] == ["celery", "remote"] \
            and w["slots_total"] == 3 and w
    row = wait_for(registered, timeout=30, message="the plain worker in edge-kombu workers")
    assert row["kind"] == "celery" and row["state"] == "idle"
    assert row["versions"]["celery"] and row["sysinfo"] == {"pool": "thread"}
    assert len(listed(db_url)) == 1, "listed once"
    table = edge_kombu(db_url, "workers").stdout
    assert name in table and " celery " in table

    # Its tasks carry its name in the jobs history (the Jobs page's Worker column).
    result = celery_client.send_task("tests.celery_app.add", (2, 3), queue="remote")
    assert result.get(timeout=30) == 5
    with sql.connect() as conn:
        assert conn.execute(select(models.job.c.worker)
                            .where(models.job.c.task_id == result.id)).scalar() == name

    # The Worker hosts page in a browser: marked plain, no edge-only actions offered.
    admin = signed_in(browser, api, ADMIN)
    admin.goto("/ui/workers")
    row = admin.locator(f'tr[data-worker="{name}"]')
    assert "plain Celery" in row.inner_text() and "idle" in row.inner_text()
    assert row.locator("button").count() == 0, "edge-only actions not offered"
    assert admin.locator("#workers tbody tr").count() == 1
    admin.context.close()
    job_row = page(api, "/ui/jobs").split(f'data-task-id="{result.id}"')[1].split("</tr>")[0]
    assert name in job_row, "the Jobs page's Worker column"
    queues_page = page(api, "/ui/queues")
    remote_row = queues_page.split('data-queue="remote"')[1].split("</tr>")[0]
    assert name in remote_row, "Workers serving it"

    # Celery's own remote control steers it, and the listing follows.
    assert celery_client.control.add_consumer("extra", destination=[name], reply=True)
    wait_for(lambda: "extra" in listed(db_url)[name]["queues"], timeout=30,
             message="the added queue listed")

    # Edge-only requests are refused with what to use instead.
    refused = edge_kombu(db_url, "worker", "maintenance", name, "on", "--comments", "x")
    assert refused.returncode == 1 and "celery -A <app> control" in refused.stderr

    # A clean stop closes its session: the worker goes offline.
    worker.stop()
    wait_for(lambda: listed(db_url)[name]["state"] == "offline", timeout=30,
             message="the stopped plain worker offline")


def test_no_mailbox_warning_after_an_api_restart(api, broker_url, worker_factory, celery_client,
                                                 tmp_path):
    worker = worker_factory(broker_url, name="carried", pool="threads")
    assert celery_client.control.ping(destination=[worker.hostname], timeout=5)
    api.restart()
    # The worker reconnects, carries its session on and declares its mailbox again.
    wait_for(lambda: celery_client.control.ping(destination=[worker.hostname], timeout=2),
             timeout=60, message="the worker answers ping after the restart")
    assert worker.log().count("Connected to edge+http") >= 2, "it did reconnect"
    ping = subprocess.run(
        [str(BIN / "celery"), "-A", "tests.celery_app", "inspect", "ping", "-d", worker.hostname],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), EDGE_TEST_BROKER_URL=broker_url,
                 EDGE_TEST_RESULT_URL=broker_url))
    assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
    assert MAILBOX_WARNING not in worker.log()
    # Celery logs the lost connection's exception: ours alone, not requests' and urllib3's
    # chained under it.
    lost = worker.log().split("Connection to broker lost")[1].split("\n[")[0]
    assert "urllib3" not in lost and "During handling" not in lost, lost
    assert "cannot reach the edge API" in lost and len(lost.splitlines()) < 45, lost
