"""Task logs without a shared disk: an edge task's log through Airflow's REST API, while it
runs and after, from two api-servers that share nothing but the database.

The edge worker, the two api-servers (and the scheduler) each have their own
``[logging] base_log_folder``; the worker pushes the log to the edge API, the
api-servers read it from the database (``[logging] logging_config_class =
edge_kombu.airflow.logging_config.LOGGING_CONFIG``). The task
logs a marker, then waits for a file the test creates once it has read the marker.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import pytest
import requests

from tests.airflow.site import AirflowSite
from tests.conftest import scratch_database
from tests.helpers import BIN, Process, free_port, wait_for

DAG_ID = "edge_log_tail"
RUN_ID = "logs_1"
MARKER = "EDGE-LOG-MARKER"
POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"

WAITING_DAG = '''
from __future__ import annotations

import logging
import os
import time

import pendulum
from airflow.sdk import dag, task

log = logging.getLogger(__name__)


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def edge_log_tail():
    @task
    def wait_for_release():
        log.info("EDGE-LOG-MARKER before release: ünïcode ✓")
        release = os.environ["EDGE_TEST_RELEASE_FILE"]  # the edge worker's environment
        deadline = time.monotonic() + 120  # bounded: the test releases it in seconds
        while not os.path.exists(release):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{release} never appeared")
            time.sleep(0.1)
        for n in range(3):
            log.info("EDGE-LOG-MARKER after release %d", n)

    @task(retries=0)
    def fails():
        log.info("EDGE-LOG-MARKER before failing")
        raise ValueError("edge task failed on purpose")

    wait_for_release()
    fails()


edge_log_tail()
'''


class APIServer:
    """An ``airflow api-server`` of the site on a port of its own, with its own log folder."""

    def __init__(self, site: AirflowSite, name: str, port: int, log_folder: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.process = Process([str(BIN / "airflow"), "api-server", "--port", str(port),
                                "--workers", "1"], site.tmp / f"{name}.log", cwd=site.tmp)
        self.process.env = site.environ(AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(log_folder))
        site.processes.append(self.process)
        self._token: str | None = None

    def start(self) -> APIServer:
        self.process.start()

        def ready() -> bool:
            if not self.process.alive():
                raise AssertionError(f"api-server exited:\n{self.process.log()}")
            return all(requests.get(f"{self.url}{path}", timeout=10).status_code == 200
                       for path in ("/api/v2/version", "/edge/api/v1/health",
                                    "/execution/health"))

        wait_for(ready, timeout=90, interval=0.2, message=f"api-server {self.url} ready")
        return self

    def task_log(self, task_id: str, try_number: int = 1, *, stream: bool = False
                 ) -> list[dict]:
        """The log's lines as the REST API gives them: JSON, or the UI's NDJSON stream."""
        if self._token is None:
            answer = requests.get(f"{self.url}/auth/token", timeout=10)
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        accept = "application/x-ndjson" if stream else "application/json"
        answer = requests.get(
            f"{self.url}/api/v2/dags/{DAG_ID}/dagRuns/{RUN_ID}/taskInstances/{task_id}/logs/"
            f"{try_number}", params={"full_content": "true"}, timeout=30,
            headers={"Authorization": f"Bearer {self._token}", "Accept": accept},
        )
        if answer.status_code == 404:  # the try is not scheduled yet
            return []
        assert answer.status_code == 200, answer.text
        if stream:
            return [json.loads(line) for line in answer.text.splitlines() if line.strip()]
        return answer.json()["content"]


def events(content: list[dict]) -> list[str]:
    return [str(line.get("event")) for line in content]


def marked(content: list[dict]) -> list[str]:
    return [event for event in events(content) if MARKER in event]


@pytest.fixture(params=["sqlite", "postgres"])
def site(request, tmp_path):
    with ExitStack() as stack:
        db_url = None
        if request.param == "postgres":
            db_url = stack.enter_context(scratch_database(POSTGRES_URL))
        airflow_site = AirflowSite(tmp_path, db_url=db_url)
        stack.callback(airflow_site.stop)
        yield airflow_site


def test_log_of_a_running_edge_task_from_two_api_servers_without_shared_disk(site, tmp_path):
    site.env.update({
        "AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS":
            "edge_kombu.airflow.logging_config.LOGGING_CONFIG",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(tmp_path / "scheduler-logs"),
        "AIRFLOW__EDGE__LOG_PUSH_INTERVAL": "0.2",
    })
    folders = {name: tmp_path / f"{name}-logs" for name in ("worker", "api1", "api2")}
    release = tmp_path / "release"
    site.add_dag("edge_log_tail.py", WAITING_DAG)
    try:
        site.airflow("db", "migrate")
        site.start_scheduler()
        site.start_dag_processor()
        # The site's own port is the one the worker and the executor know (execution API).
        first = APIServer(site, "api-server-1", site.port, folders["api1"]).start()
        second = APIServer(site, "api-server-2", free_port(), folders["api2"]).start()
        site.start_edge_worker("logs", EDGE_TEST_RELEASE_FILE=str(release),
                               AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(folders["worker"]))
        site.wait_for_dag(DAG_ID)
        site.airflow("dags", "trigger", DAG_ID, "--run-id", RUN_ID)

        # While it runs: both api-servers show the marker, read from the database.
        for server in (first, second):
            content = wait_for(lambda s=server: marked(s.task_log("wait_for_release")) and
                               s.task_log("wait_for_release"),
                               timeout=90, interval=0.3, message=f"marker via {server.url}")
            assert marked(content) == [f"{MARKER} before release: ünïcode ✓"]
            assert "edge worker log of try 1" in json.dumps(content)
        running = [ti for ti in site.task_instances(DAG_ID, RUN_ID)
                   if ti["task_id"] == "wait_for_release"]
        assert running[0]["state"] == "running"

        release.touch()
        assert site.wait_for_dag_run(DAG_ID, RUN_ID) == "failed"  # the task meant to fail
        states = {ti["task_id"]: ti["state"] for ti in site.task_instances(DAG_ID, RUN_ID)}
        assert states == {"wait_for_release": "success", "fails": "failed"}
        expected = [f"{MARKER} before release: ünïcode ✓"] + [
            f"{MARKER} after release {n}" for n in range(3)]
        for server in (second, first):
            content = wait_for(lambda s=server: (c := s.task_log("wait_for_release")) and
                               len(marked(c)) == 4 and c,
                               timeout=30, interval=0.3, message=f"whole log via {server.url}")
            assert marked(content) == expected
            # The supervisor's own lines came along, parsed as structured log lines.
            assert any(line.get("logger") == "task" or line.get("level") for line in content)
            assert not any("Could not read served logs" in e for e in events(content)), content
            assert marked(server.task_log("wait_for_release", stream=True)) == expected

        # A failed task's log is complete too, with the error.
        failed = wait_for(lambda: (c := second.task_log("fails")) and
                          "edge task failed on purpose" in json.dumps(c) and c,
                          timeout=30, interval=0.3, message="the failed task's log")
        assert marked(failed) == [f"{MARKER} before failing"]

        # Nothing was shared on disk: the log files exist on the worker only.
        worker_logs = list(folders["worker"].rglob("attempt=1.log"))
        assert len(worker_logs) == 2, worker_logs
        assert all(MARKER in path.read_text(encoding="utf-8") for path in worker_logs)
        for name in ("api1", "api2"):
            assert not list(folders[name].rglob("*.log")), f"{name} has log files"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{site.logs()}") from None
