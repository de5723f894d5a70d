"""``edge-kombu demo`` with Airflow installed: a whole Airflow site on SQLite and an edge worker.

It starts ``airflow api-server`` (serving the edge API under ``/edge``), the scheduler,
the dag-processor, the triggerer and one edge worker (``celery -A edge_kombu worker``,
whose database URL points nowhere: it reaches the central site only over HTTP), runs the
``edge_demo`` DAG through the edge worker, prints what ran where and the UI address, and waits for
Ctrl-C (or exits at once with ``--once``). Everything it starts is a child process,
stopped by PID on the way out, and listens on 127.0.0.1 only (Airflow's log servers, which
listen on every interface, are not started: the edge tasks' logs come from the database,
the central ones from the local files).

All settings travel as ``AIRFLOW__*`` variables; nothing is written to ``airflow.cfg``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import sys
import time
from contextlib import ExitStack
from importlib import resources
from pathlib import Path

import click
import requests

from edge_kombu.children import free_port, start_child, wait_until

DAG_ID = "edge_demo"
EXECUTORS = "edge_kombu.airflow.EdgeExecutor,LocalExecutor"
#: The edge worker's ``[database] sql_alchemy_conn``: a file that cannot be opened.
NO_DATABASE = "sqlite:////nonexistent/edge-workers-have-no-database.db"


def default_home() -> Path:
    return Path(os.environ.get("EDGE_KOMBU_DEMO_HOME", "~/airflow-edge-demo")).expanduser()


class Site:
    """The demo's AIRFLOW_HOME, environment and REST client."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.dags = home / "dags"
        self.logs = home / "demo-logs"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        for folder in (self.dags, self.logs):
            folder.mkdir(parents=True, exist_ok=True)
        example = resources.files("edge_kombu.airflow.example_dags") / f"{DAG_ID}.py"
        (self.dags / f"{DAG_ID}.py").write_text(example.read_text(encoding="utf-8"))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTOR": EXECUTORS,
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            # The LocalExecutor forks this many processes at start; the demo needs few.
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__INTERNAL_API_SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__EDGE__API_ENABLED": "True",
            "AIRFLOW__EDGE__API_URL": f"{self.base_url}/edge",
            # Edge tasks' logs in the UI, pushed by the worker to the edge tables.
            "AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS":
                "edge_kombu.airflow.logging_config.LOGGING_CONFIG",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.5",
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "EDGE_KOMBU_RUN_DIR": str(home / "run"),
        }
        self._token: str | None = None

    def bin(self, name: str) -> str:
        return str(Path(sys.executable).parent / name)

    # -- REST API of the api-server ------------------------------------------------------

    def password(self) -> str | None:
        """The admin password the api-server generated, once it has."""
        path = self.home / "simple_auth_manager_passwords.json.generated"
        try:
            return json.loads(path.read_text()).get("admin")
        except (OSError, ValueError):
            return None

    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        if self._token is None:
            answer = requests.post(f"{self.base_url}/auth/token", timeout=10,
                                   json={"username": "admin", "password": self.password()})
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        return requests.request(method, f"{self.base_url}/api/v2{path}", timeout=30,
                                headers={"Authorization": f"Bearer {self._token}"}, **kwargs)

    def serving(self) -> bool:
        try:
            return all(requests.get(f"{self.base_url}{path}", timeout=5).status_code == 200
                       for path in ("/api/v2/version", "/edge/api/v1/health",
                                    "/execution/health"))
        except requests.RequestException:
            return False

    def dag_parsed(self) -> bool:
        return self.rest("GET", f"/dags/{DAG_ID}").status_code == 200

    def run_state(self, run_id: str) -> str | None:
        answer = self.rest("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
        answer.raise_for_status()
        state = answer.json()["state"]
        return state if state in ("success", "failed") else None

    def report(self, run_id: str) -> list[str]:
        """One line per task instance: state, executor, queue, slots and where it ran."""
        answer = self.rest("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")
        answer.raise_for_status()
        lines = [f"  {'task':<14} {'state':<8} {'executor':<14} {'queue':<8} slots  ran on"]
        for ti in sorted(answer.json()["task_instances"],
                         key=lambda ti: (ti["start_date"] or "", ti["map_index"])):
            name = ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else "")
            xcom = self.rest("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/"
                                    f"{ti['task_id']}/xcomEntries/return_value",
                             params={"map_index": ti["map_index"], "deserialize": True})
            where = xcom.json()["value"] if xcom.ok else "-"
            # No executor on the task means the default one, the first configured.
            executor = (ti.get("executor") or EXECUTORS.split(",")[0]).rsplit(".", 1)[-1]
            lines.append(f"  {name:<14} {ti['state']:<8} {executor:<14} {ti['queue']:<8} "
                         f"{ti['pool_slots']:<6} {where}")
        return lines


def run_airflow_demo(home: Path, once: bool) -> None:
    started = time.monotonic()
    site = Site(home)
    click.echo(f"AIRFLOW_HOME: {home} (metadata and edge tables in {home / 'airflow.db'}, "
               f"process logs in {site.logs})")
    _stop_on_sigterm()
    try:
        with ExitStack() as stack:
            stack.callback(click.echo, "stopped everything the demo started")
            try:
                _run(stack, site, started, once)
            finally:
                # A second Ctrl-C must not cut the stopping of the children short.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
    except KeyboardInterrupt:
        click.echo("interrupted")


def _run(stack: ExitStack, site: Site, started: float, once: bool) -> None:
    home = site.home
    click.echo("migrating the database (airflow db migrate: Airflow's and the edge tables)")
    migrate = start_child(stack, [site.bin("airflow"), "db", "migrate"], site.env,
                          site.logs / "db-migrate.log")
    wait_until(lambda: migrate.poll() is not None, 300, "airflow db migrate")
    if migrate.returncode != 0:
        raise click.ClickException(
            f"airflow db migrate failed; see {site.logs / 'db-migrate.log'}")

    api = start_child(stack, [site.bin("airflow"), "api-server", "--host", "127.0.0.1",
                              "--port", str(site.port), "--workers", "1"],
                      site.env, site.logs / "api-server.log")
    for name, options in (("scheduler", ["--skip-serve-logs"]), ("dag-processor", []),
                          ("triggerer", ["--skip-serve-logs"])):
        start_child(stack, [site.bin("airflow"), name, *options], site.env,
                    site.logs / f"{name}.log")
    wait_until(site.serving, 180, "airflow api-server", api, site.logs / "api-server.log")
    click.echo(f"api-server:  {site.base_url} (edge API at {site.base_url}/edge)")
    ui_line = f"Airflow UI:  {site.base_url}  (user admin, password {site.password()})"
    click.echo(ui_line)

    worker_home = home / "edge-worker"
    worker_env = {**site.env, "AIRFLOW_HOME": str(worker_home),
                  "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": NO_DATABASE}
    worker_log = site.logs / "edge-worker.log"
    worker_name = f"demo-edge@{socket.gethostname()}"
    worker = start_child(stack, [site.bin("celery"), "-A", "edge_kombu", "worker",
                                 "-Q", "default", "-c", "4", "-n", worker_name,
                                 "-l", "info"],
                         worker_env, worker_log, cwd=home)
    wait_until(lambda: " ready." in worker_log.read_text(errors="replace"), 120,
               "the edge worker", worker, worker_log)
    click.echo(f"edge worker: {worker_name}, 4 slots, queue 'default', no database "
               f"access (AIRFLOW_HOME {worker_home})")

    wait_until(site.dag_parsed, 180, f"DAG {DAG_ID} parsed")
    run_id = f"demo_{time.strftime('%Y%m%dT%H%M%S')}"
    answer = site.rest("POST", f"/dags/{DAG_ID}/dagRuns",
                       json={"dag_run_id": run_id, "logical_date": None})
    answer.raise_for_status()
    click.echo(f"triggered {DAG_ID} run {run_id}")
    state = wait_until(lambda: site.run_state(run_id), 300, f"DAG run {run_id}")
    click.echo(f"{DAG_ID} {run_id}: {state} ({time.monotonic() - started:.0f}s after "
               f"start); what ran where:")
    for line in site.report(run_id):
        click.echo(line)
    click.echo(ui_line)
    if state != "success":
        raise click.ClickException(f"the DAG run ended {state}; logs in {site.logs}")
    if not once:
        click.echo("Ctrl-C stops everything the demo started.")
        signal.pause()


def _stop_on_sigterm() -> None:
    """SIGTERM ends the demo as Ctrl-C does, so the ExitStack stops the children."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)

