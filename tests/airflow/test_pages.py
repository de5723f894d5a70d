"""The monitoring pages inside ``airflow api-server``: in the Admin menu, behind Airflow's
auth manager, showing an Airflow task run by an edge worker with its DAG, task and run."""

from __future__ import annotations

import requests

from tests.airflow.site import AirflowSite
from tests.helpers import wait_for

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
        site.airflow("db", "migrate")
        site.start_scheduler()
        site.start_dag_processor()
        site.start_api_server()
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
            "from edge_kombu.server.db import create_db_engine, normalize_url\n"
            "from edge_kombu.server.store import Store\n"
            "from airflow.configuration import conf\n"
            "url = normalize_url(conf.get('database', 'sql_alchemy_conn'))\n"
            "print(Store(create_db_engine(url)).create_token('page-prober'))").strip()
        refused = requests.get(f"{site.base_url}/edge/ui/workers", timeout=30,
                               headers={"Authorization": f"Bearer {worker_token}"})
        assert refused.status_code == 401, refused.text
    finally:
        site.stop()
