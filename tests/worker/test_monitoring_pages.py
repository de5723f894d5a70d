"""The Worker hosts, Jobs and Queues pages in real headless Chromium, on a live API server
and a live edge worker, with a screenshot of each page (the README shows them from docs/img/).

Debian's ``chromium`` is handed to Playwright as its executable (no browser download).
Without it the test skips locally and fails in CI. Screenshots go to the test's temporary
directory; ``EDGE_KOMBU_SCREENSHOTS=docs/img`` writes the README's images instead.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests

from tests.conftest import IN_CI
from tests.helpers import CHROMIUM, ROOT, wait_for
from tests.worker.conftest import held_task

pytestmark = pytest.mark.timeout(240)

ADMIN, VIEWER = ("admin", "admin-secret-1"), ("viewer", "viewer-secret-1")


@pytest.fixture
def api(api_factory):
    """The API server with both page users configured."""
    return api_factory(env={"EDGE_KOMBU_UI_ADMIN": ":".join(ADMIN),
                            "EDGE_KOMBU_UI_VIEWER": ":".join(VIEWER)})


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        message = f"chromium not found at {CHROMIUM} (apt-get install chromium)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


def signed_in(browser, api, user: tuple[str, str]):
    context = browser.new_context(
        base_url=api.url, viewport={"width": 1500, "height": 700}, timezone_id="Europe/Berlin",
        http_credentials={"username": user[0], "password": user[1]},
    )
    return context.new_page()


def test_pages_show_live_data_and_admin_actions_reach_the_worker(
        browser, api, edge_workers, send, celery_client, tmp_path):
    screenshots = ROOT / os.environ.get("EDGE_KOMBU_SCREENSHOTS", tmp_path / "screenshots")
    worker = edge_workers("pages1", queues="remote,reports", concurrency=3)
    name = worker.hostname
    for i in range(3):
        assert send("touch", str(tmp_path / f"done{i}")).get(timeout=30) == f"done{i}"
    result, started, release = held_task(send, tmp_path, "long")
    wait_for(started.exists, message="held task running")
    send("touch", str(tmp_path / "never"), queue="nightly")  # a queue nobody serves
    send("touch", str(tmp_path / "big"), queue="reports", slots=8)  # bigger than any worker
    workload = {"ti": {"dag_id": "nightly_etl", "task_id": "load", "run_id": "scheduled__1",
                       "map_index": 4, "try_number": 2}}  # as the EdgeExecutor publishes it
    celery_client.send_task("execute_workload", args=[json.dumps(workload)], queue="airflow",
                            headers={"pool_slots": 2})

    admin = signed_in(browser, api, ADMIN)
    # Worker hosts: live state, slots, the running task, system metrics, versions.
    admin.goto("/ui/workers")
    row = admin.locator(f'tr[data-worker="{name}"]')
    wait_for(lambda: "tests.edge_tasks.hold" in row.inner_text(), message="running task shown")
    text = row.inner_text()
    assert "running" in text and "1/3" in text and "edge_kombu" in text and "%" in text
    screenshots.mkdir(parents=True, exist_ok=True)
    admin.screenshot(path=screenshots / "workers.png", full_page=True)

    # Jobs: the finished tasks with their worker, the running one, times in local time.
    admin.goto("/ui/jobs")
    jobs = admin.locator("#jobs tbody tr")
    wait_for(lambda: jobs.count() == 7, message="seven jobs listed")
    assert "nightly_etl.load[4]" in jobs.first.inner_text()
    assert "scheduled__1 · try 2" in jobs.first.inner_text()
    assert admin.locator('span[data-state="success"]').count() == 3
    assert admin.locator('span[data-state="running"]').count() == 1
    assert name in admin.locator("#jobs").inner_text()
    first_time = admin.locator("#jobs time").first
    assert first_time.get_attribute("datetime").endswith("+00:00")
    assert "+00:00" not in first_time.inner_text()  # shown in the browser's timezone
    admin.screenshot(path=screenshots / "jobs.png", full_page=True)
    admin.select_option("select[name=state]", "success")
    admin.click("form.filters button")
    wait_for(lambda: jobs.count() == 3, message="filtered to the three successes")

    # Queues: depth, serving workers, the unserved queue and the too-big task flagged.
    admin.goto("/ui/queues")
    nightly = admin.locator('tr[data-queue="nightly"]')
    assert nightly.locator(".depth").inner_text() == "1"
    assert "no live worker" in nightly.inner_text()
    reports = admin.locator('tr[data-queue="reports"]')
    assert "needs 8 slots" in reports.inner_text() and name in reports.inner_text()
    assert name in admin.locator('tr[data-queue="remote"]').inner_text()
    admin.screenshot(path=screenshots / "queues.png", full_page=True)

    # Maintenance from the page reaches the live worker at its next heartbeat.
    release.touch()
    assert result.get(timeout=30) == "long.started"
    admin.goto("/ui/workers")
    admin.once("dialog", lambda dialog: dialog.accept("swap disk"))
    row.locator('button[data-action="maintenance-on"]').click()
    status = worker.wait_state("maintenance mode")
    assert status["maintenance_comment"] == "swap disk"
    wait_for(lambda: "maintenance mode" in row.inner_text(), message="page refreshed itself")
    assert "swap disk" in row.inner_text()
    admin.once("dialog", lambda dialog: dialog.accept())
    row.locator('button[data-action="maintenance-off"]').click()
    worker.wait_state("idle")

    # A viewer sees the same pages without actions, and the server refuses its POSTs.
    viewer = signed_in(browser, api, VIEWER)
    viewer.goto("/ui/workers")
    assert name in viewer.locator("#workers").inner_text()
    assert viewer.locator("button[data-action]").count() == 0
    answer = viewer.evaluate(
        """async (name) => {
            const r = await fetch("/ui/actions/workers/" + name + "/maintenance", {
                method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({on: true, comment: "viewer"})});
            return [r.status, (await r.json()).message];
        }""", name)
    assert answer[0] == 403 and "viewer" in answer[1]
    assert worker.status()["state"] == "idle"

    # The other actions: each prompt or confirmation answered as an admin would.
    answers = []
    admin.on("dialog", lambda dialog: dialog.accept(answers.pop(0)))
    answers[:] = ["4"]
    row.locator('button[data-action="concurrency"]').click()
    wait_for(lambda: worker.status()["slots_total"] == 4, message="slot budget 4")
    answers[:] = ["extra", "reports"]  # add extra, remove reports
    row.locator('button[data-action="queues"]').click()
    wait_for(lambda: worker.status()["consuming"] == ["remote", "extra"],
             message="queues changed")
    answers[:] = [""]
    row.locator('button[data-action="shutdown"]').click()
    assert worker.proc.wait(60) == 0
    wait_for(lambda: row.locator('button[data-action="remove"]').count() == 1,
             message="offline worker can be removed")
    answers[:] = [""]
    row.locator('button[data-action="remove"]').click()
    wait_for(lambda: row.count() == 0, message="worker removed from the page")


def test_pages_refuse_worker_tokens_wrong_passwords_and_forged_actions(api, token):
    url = f"{api.url}/ui/workers"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": f"Bearer {token}"},
                        timeout=10).status_code == 401
    assert requests.get(url, auth=(ADMIN[0], "wrong"), timeout=10).status_code == 401
    page = requests.get(url, auth=ADMIN, timeout=10)
    assert page.status_code == 200 and 'name="csrf-token"' in page.text
    action = f"{api.url}/ui/actions/workers/nobody/shutdown"
    forged = requests.post(action, json={}, auth=ADMIN, timeout=10)  # no CSRF token
    assert forged.status_code == 403 and "X-CSRF-Token" in forged.json()["message"]
    csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]
    real = requests.post(action, json={}, auth=ADMIN, headers={"X-CSRF-Token": csrf},
                         timeout=10)
    assert real.status_code == 404 and "nobody" in real.json()["message"]
    bad = requests.get(f"{api.url}/ui/jobs?limit=100000", auth=VIEWER, timeout=10)
    assert bad.status_code == 400 and "limit" in bad.json()["message"]


def test_without_configured_users_the_pages_say_how_to_enable_them(api_factory):
    server = api_factory()
    answer = requests.get(f"{server.url}/ui/workers", timeout=10)
    assert answer.status_code == 403 and "EDGE_KOMBU_UI_ADMIN" in answer.json()["message"]


def test_bulk_actions_and_the_maintenance_comment_from_the_worker_hosts_page(
        browser, api, edge_workers):
    """Several workers at once, as on the edge provider's page; the comment edited in
    maintenance; the selection kept across the page's refreshes."""
    workers = [edge_workers(f"bulk{i}", concurrency=1) for i in range(3)]
    admin = signed_in(browser, api, ADMIN)
    admin.goto("/ui/workers")
    answers = []
    admin.on("dialog", lambda dialog: dialog.accept(answers.pop(0)))
    for worker in workers[:2]:
        admin.locator(f'tr[data-worker="{worker.hostname}"] input.pick').check()
    assert admin.locator("#picked").inner_text() == "2"
    last = admin.locator("#status").inner_text()
    wait_for(lambda: admin.locator("#status").inner_text() != last, message="page refreshed")
    assert admin.locator("input.pick:checked").count() == 2  # kept across the refresh

    answers[:] = ["rack move"]
    admin.click('button[data-bulk="maintenance-on"]')
    for worker in workers[:2]:
        assert worker.wait_state("maintenance mode")["maintenance_comment"] == "rack move"
    assert workers[2].status()["state"] == "idle"  # not selected, not touched

    row = admin.locator(f'tr[data-worker="{workers[0].hostname}"]')
    wait_for(lambda: row.locator('button[data-action="maintenance-comment"]').count() == 1,
             message="comment button shown in maintenance")
    answers[:] = ["rack move, back at 14:00"]
    row.locator('button[data-action="maintenance-comment"]').click()
    wait_for(lambda: workers[0].status()["maintenance_comment"] == "rack move, back at 14:00",
             message="new comment reached the worker")
    assert workers[0].status()["state"] == "maintenance mode"  # still in maintenance
    audit = admin.locator("#audit").inner_text()
    assert "maintenance comment" in audit and "rack move, back at 14:00" in audit

    answers[:] = [""]
    admin.click('button[data-bulk="maintenance-off"]')
    for worker in workers[:2]:
        worker.wait_state("idle")
    answers[:] = ["decommissioned"]
    admin.click('button[data-bulk="shutdown"]')
    for worker in workers[:2]:
        assert worker.proc.wait(60) == 0
    assert workers[2].alive()
