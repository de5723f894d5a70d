"""Airflow's multi-team mode (AIP-67) through edge workers, with real Airflow processes on
one SQLite site: two teams, each owning a DAG bundle and running an EdgeExecutor of its
own (``[core] executor = EdgeExecutor;team_a=EdgeExecutor;team_b=EdgeExecutor``), each
with an edge worker started by ``airflow edge worker --team-name`` on a credential made
with ``edge-kombu token create --team``, next to a worker of no team on the same queue
name. Each team's task runs on its team's worker; what a team's credential may not do is
in tests/worker/test_teams.py (the same on every database)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.airflow.site import AirflowSite

pytestmark = pytest.mark.sqlite_only

TEAMS = ("team_a", "team_b")
EXECUTOR = "edge_kombu.airflow.EdgeExecutor"

TEAM_DAG = '''
from __future__ import annotations

import os

import pendulum
from airflow.sdk import dag, task


@dag(dag_id="{team}_dag", schedule=None, start_date=pendulum.datetime(2024, 1, 1),
     catchup=False)
def team_dag():
    @task(retries=0)
    def where():
        return os.environ.get("EDGE_KOMBU_WORKER")

    where()


team_dag()
'''


def _team_token(site: AirflowSite, team: str) -> str:
    done = subprocess.run(
        [str(site.bin / "edge-kombu"), "token", "create", "--worker", f"{team}-*",
         "--team", team, "--queues", "default",
         "--db", site.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]],
        capture_output=True, text=True, env=site.environ(), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_each_teams_tasks_run_on_its_own_edge_workers(tmp_path):
    site = AirflowSite(tmp_path, executor=";".join([EXECUTOR, *(f"{t}={EXECUTOR}" for t in TEAMS)]))
    bundles = []
    for team in TEAMS:
        folder = tmp_path / f"{team}-dags"
        folder.mkdir()
        (folder / f"{team}.py").write_text(TEAM_DAG.format(team=team))
        bundles.append({"name": f"{team}_dags", "team_name": team,
                        "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                        "kwargs": {"path": str(folder), "refresh_interval": 1}})
    site.env.update({"AIRFLOW__CORE__MULTI_TEAM": "True",
                     "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundles)})
    try:
        site.airflow("db", "migrate")
        for team in TEAMS:
            site.airflow("teams", "create", team)
        site.start_scheduler()
        site.start_dag_processor()
        site.start_api_server()
        # A worker of no team on the same queue name: it must see none of the teams' tasks.
        site.start_edge_worker("global-1", concurrency=1)
        for team in TEAMS:
            site.start_edge_worker(f"{team}-1", via_airflow=True, team=team,
                                   EDGE_KOMBU_TOKEN=_team_token(site, team))
        for team in TEAMS:
            site.wait_for_dag(f"{team}_dag")
            answer = site.rest("POST", f"/dags/{team}_dag/dagRuns",
                               json={"dag_run_id": "r1", "logical_date": None})
            assert answer.status_code == 200, answer.text
        for team in TEAMS:
            assert site.wait_for_dag_run(f"{team}_dag", "r1") == "success", site.logs()
            assert site.xcom(f"{team}_dag", "r1", "where") == f"{team}-1@localhost"
        listed = json.loads(site.airflow("edge", "list-workers", "--output", "json").stdout)
        teams = {w["worker_name"]: (w["team_name"], w["queues"]) for w in listed}
        assert teams == {"global-1@localhost": ("", "default"),
                         "team_a-1@localhost": ("team_a", "team_a:default"),
                         "team_b-1@localhost": ("team_b", "team_b:default")}, listed
    finally:
        site.stop()
