"""The monitoring pages inside ``airflow api-server``: in the Admin menu, behind Airflow's
auth manager, showing an Airflow task run by an edge worker with its DAG, task and run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import requests

from tests.airflow.site import AirflowSite
from tests.conftest import IN_CI
from tests.helpers import CHROMIUM, ROOT, wait_for

DAG = '''
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def edge_pages():
    task(task_id="weigh", pool_slots=2)(lambda: 42)()


edge_pages()
'''


def test_pages_in_airflow_show_airflow_tasks_to_airflow_users_only(tmp_path):
    site = AirflowSite(tmp_path)
    site.add_dag("edge_pages.py", DAG)
    try:
        site.start_central()
        site.start_edge_worker("pages-af", queues="default")
        hostname = "pages-af@localhost"
        site.wait_for_dag("edge_pages")
        site.airflow("dags", "trigger", "edge_pages", "--run-id", "pages_1")
        assert site.wait_for_dag_run("edge_pages", "pages_1") == "success", site.logs()

        plugins = site.rest("GET", "/plugins").json()["plugins"]
        [ours] = [p for p in plugins if p["name"] == "edge_kombu"]
        assert {(v["name"], v["href"], v["category"]) for v in ours["external_views"]} == {
            ("Edge Worker Hosts", "/edge/ui/workers", "admin"),
            ("Edge Worker Jobs", "/edge/ui/jobs", "admin"),
            ("Edge Queues", "/edge/ui/queues", "admin"),
        }

        token = requests.get(f"{site.base_url}/auth/token", timeout=10).json()["access_token"]
        session = requests.Session()
        session.cookies.set("_token", token)
        jobs = wait_for(lambda: (page := session.get(f"{site.base_url}/edge/ui/jobs",
                                                     timeout=30)).ok
                        and 'data-state="success"' in page.text and page.text,
                        timeout=60, message="the Airflow task finished on the Jobs page")
        assert "edge_pages" in jobs and "weigh" in jobs and "pages_1" in jobs
        assert hostname in jobs and "(admin)" in jobs
        hosts = session.get(f"{site.base_url}/edge/ui/workers", timeout=30).text
        assert hostname in hosts and 'data-action="maintenance-on"' in hosts

        # An edge worker's token is no Airflow session.
        worker_token = site.python(
            "from edge_kombu.server.credentials import Credentials\n"
            "from edge_kombu.server.sql import SQL\n"
            "from airflow.configuration import conf\n"
            "url = conf.get('database', 'sql_alchemy_conn')\n"
            "print(Credentials(SQL.from_url(url)).create('page-prober'))").strip()
        refused = requests.get(f"{site.base_url}/edge/ui/workers", timeout=30,
                               headers={"Authorization": f"Bearer {worker_token}"})
        assert refused.status_code == 401, refused.text

        in_airflow_ui(site, token, hostname, tmp_path)
        acts_as_the_airflow_user(site, session, hostname)
        manages_with_airflow_auth(site, token, hostname, worker_token)
    finally:
        site.stop()


def newest_audit_entry(site: AirflowSite, hostname: str) -> list[dict]:
    """The audit log's latest entry on ``hostname``, read from the site's database."""
    return json.loads(site.python(
        "import json\n"
        "from edge_kombu.server.audit import AuditLog\n"
        "from edge_kombu.server.sql import SQL\n"
        "from airflow.configuration import conf\n"
        "url = conf.get('database', 'sql_alchemy_conn')\n"
        f"print(json.dumps(AuditLog(SQL.from_url(url)).recent(target={hostname!r}, limit=1)))"))


def acts_as_the_airflow_user(site: AirflowSite, session: requests.Session, hostname: str) -> None:
    """A page action inside Airflow is recorded with the signed-in Airflow user as its actor."""
    hosts = session.get(f"{site.base_url}/edge/ui/workers", timeout=30).text
    csrf = hosts.split('name="csrf-token" content="')[1].split('"')[0]
    user = hosts.split('<span class="who">')[1].split(" (admin)")[0]
    done = session.post(f"{site.base_url}/edge/ui/actions/workers/{hostname}/maintenance",
                        json={"on": True, "comment": "audited in Airflow"},
                        headers={"X-CSRF-Token": csrf}, timeout=30)
    assert done.status_code == 200, done.text
    newest = newest_audit_entry(site, hostname)
    assert [(e["actor"], e["via"], e["action"], e["comment"]) for e in newest] == [
        (user, "airflow", "maintenance on", "audited in Airflow")]
    shown = session.get(f"{site.base_url}/edge/ui/workers", timeout=30).text
    assert "audited in Airflow" in shown.split('<table id="audit">')[1]


def manages_with_airflow_auth(site: AirflowSite, token: str, hostname: str,
                              worker_token: str) -> None:
    """The management REST API inside Airflow: Airflow's token is the admin's credential."""
    manage = f"{site.base_url}/edge/api/v1/manage"
    bearer = {"Authorization": f"Bearer {token}"}
    listed = requests.get(f"{manage}/workers", headers=bearer, timeout=30)
    assert listed.status_code == 200, listed.text
    assert hostname in [w["name"] for w in listed.json()["workers"]]
    done = requests.post(f"{manage}/workers/{hostname}/maintenance", headers=bearer,
                         json={"on": False, "comment": "via the REST API"}, timeout=30)
    assert done.status_code == 200 and done.json()["worker"]["maintenance"] is False, done.text
    newest = newest_audit_entry(site, hostname)
    assert [(e["via"], e["action"], e["comment"]) for e in newest] == [
        ("airflow", "maintenance off", "via the REST API")]
    refused = requests.get(f"{manage}/workers", timeout=30,
                           headers={"Authorization": f"Bearer {worker_token}"})
    assert refused.status_code == 403 and "worker token" in refused.json()["message"]


def in_airflow_ui(site: AirflowSite, token: str, hostname: str, tmp_path: Path) -> None:
    """Admin menu -> Edge Worker Hosts shows the page, embedded in Airflow's UI."""
    if not Path(CHROMIUM).exists():
        if IN_CI:
            pytest.fail(f"chromium not found at {CHROMIUM}")
        return
    from playwright.sync_api import sync_playwright

    screenshots = ROOT / os.environ.get("EDGE_KOMBU_SCREENSHOTS", tmp_path / "screenshots")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 700})
            context.add_cookies([{"name": "_token", "value": token, "url": site.base_url}])
            page = context.new_page()
            page.goto(f"{site.base_url}/")
            page.get_by_role("button", name="Admin").click()
            page.get_by_role("menuitem", name="Edge Worker Hosts").click()
            row = page.frame_locator("iframe").locator(f'tr[data-worker="{hostname}"]')
            row.wait_for(timeout=30_000)
            assert "idle" in row.inner_text() or "running" in row.inner_text()
            screenshots.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=screenshots / "airflow-worker-hosts.png")
        finally:
            browser.close()
