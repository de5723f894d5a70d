"""A real Airflow site for tests: a temporary AIRFLOW_HOME on SQLite, its processes and CLI.

Every process gets the same ``AIRFLOW__*`` environment (nothing from the test runner's),
so ``airflow.cfg`` stays at its defaults and the test reads as configuration:
the EdgeExecutor, the edge API mounted in the api-server under ``/edge``, the shared
secret and the JWT secret. Edge workers get a database URL that cannot be opened, so a
run also shows they never touch the metadata database.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import psutil
import requests

from tests.helpers import BIN, Process, free_port, wait_for

#: What an edge worker gets as ``[database] sql_alchemy_conn``: no such directory.
NO_DATABASE = "sqlite:////nonexistent/edge-workers-have-no-database.db"


def stop_celery_worker(process: Process, timeout: float = 30) -> None:
    """Warm shutdown: SIGTERM to the worker's main process only, then clear its group.

    A SIGTERM to the whole process group can kill a pool process while it holds the
    pool's queue lock; billiard's main process then waits for that lock at exit forever.
    """
    if process.alive():
        os.kill(process.pid, signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.proc.wait(timeout)
    process.stop()
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def stop_airflow_process(process: Process, timeout: float = 30, every: float = 5) -> None:
    """SIGTERM to the process group, repeated every ``every`` seconds, then SIGKILL.

    Airflow's SIGTERM handler raises SystemExit; when the signal lands in a garbage
    collector callback, Python only prints "Exception ignored" and the process runs on
    (seen with the scheduler): a second SIGTERM ends it.
    """
    # Children that left the process group (the scheduler's LocalExecutor workers) would
    # outlive it: remember them now, kill what is left of them at the end.
    children: list[psutil.Process] = []
    if process.alive():
        with suppress(psutil.NoSuchProcess):
            children = psutil.Process(process.proc.pid).children(recursive=True)
    deadline = time.monotonic() + timeout
    while process.alive() and time.monotonic() < deadline:
        process.kill(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.proc.wait(every)
    process.stop()
    for child in children:
        with suppress(psutil.NoSuchProcess):
            child.kill()


def _stop_other(process: Process) -> None:
    # Airflow 3.3's triggerer logs "Forcing exit" at every SIGTERM but keeps running until
    # killed; it holds nothing a test reads afterwards, so it gets seconds, not 30.
    if process.log_path.name == "triggerer.log":
        stop_airflow_process(process, timeout=3, every=1)
    else:
        stop_airflow_process(process)


def _clean_environ() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("AIRFLOW", "EDGE_KOMBU", "EDGE_TEST"))}


class AirflowSite:
    """One AIRFLOW_HOME, the environment of its processes, and helpers to drive it."""

    def __init__(self, tmp: Path, *, executor: str = "edge_kombu.airflow.EdgeExecutor",
                 api_enabled: bool = True, db_url: str | None = None,
                 bin_dir: Path = BIN) -> None:
        self.tmp = tmp
        self.bin = bin_dir  # the virtualenv whose Airflow runs the site (benchmarks: others)
        self.home = tmp / "airflow"
        self.dags = tmp / "dags"
        self.home.mkdir(parents=True, exist_ok=True)
        self.dags.mkdir(exist_ok=True)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.edge_url = f"{self.base_url}/edge"
        self.db_path = self.home / "airflow.db"
        # Control sockets of edge workers: AF_UNIX paths must stay short.
        self.run_dir = Path(tempfile.mkdtemp(prefix="edge-run-"))
        self.env = {
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__EXECUTOR": executor,
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__CORE__INTERNAL_API_SECRET_KEY": secrets.token_hex(24),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__API__BASE_URL": self.base_url,
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
            # SQLite in AIRFLOW_HOME unless given (e.g. a scratch PostgreSQL database).
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url or f"sqlite:///{self.db_path}",
            "AIRFLOW__EDGE__API_ENABLED": str(api_enabled),
            "AIRFLOW__EDGE__API_URL": self.edge_url,
            # Speed, not semantics: the supervisor waits up to this long after a task ends.
            "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
            "EDGE_KOMBU_RUN_DIR": str(self.run_dir),
        }
        # What the api-server answers once ready (another executor's site drops /edge).
        self.ready_paths = ["/api/v2/version", "/edge/api/v1/health", "/execution/health"]
        self.processes: list[Process] = []
        self._token: str | None = None

    # -- configuration and CLI -----------------------------------------------------------

    def environ(self, **overrides: str) -> dict[str, str]:
        return {**_clean_environ(), **self.env, **overrides}

    def airflow(self, *args: str, timeout: float = 120, check: bool = True,
                **overrides: str) -> subprocess.CompletedProcess:
        """Run ``airflow ARGS`` in this site; on failure the output is in the assertion."""
        done = subprocess.run([str(self.bin / "airflow"), *args], capture_output=True, text=True,
                              timeout=timeout, env=self.environ(**overrides), cwd=self.tmp)
        if check:
            assert done.returncode == 0, (
                f"airflow {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done

    def python(self, code: str, *, timeout: float = 120, **overrides: str) -> str:
        """Run ``code`` in a fresh interpreter of this site; return its stdout."""
        done = subprocess.run([str(self.bin / "python"), "-c", code], capture_output=True,
                              text=True, timeout=timeout, env=self.environ(**overrides),
                              cwd=self.tmp)
        assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def add_dag(self, filename: str, source: str) -> None:
        (self.dags / filename).write_text(source)

    # -- processes -------------------------------------------------------------------------

    def start_process(self, name: str, args: list[str], **overrides: str) -> Process:
        process = Process(args, self.tmp / f"{name}.log", cwd=self.tmp)
        process.env = self.environ(**overrides)
        self.processes.append(process)
        return process.start()

    def start_api_server(self) -> Process:
        process = self.start_process("api-server", [str(self.bin / "airflow"), "api-server",
                                                    "--port", str(self.port), "--workers", "1"])

        def ready() -> bool:
            if not process.alive():
                raise AssertionError(f"api-server exited:\n{process.log()}")
            return all(requests.get(f"{self.base_url}{path}", timeout=10).status_code == 200
                       # The Execution API builds its versioned routes on its first request
                       # (seconds of CPU); pay that here, not in the first task.
                       for path in self.ready_paths)

        wait_for(ready, timeout=90, interval=0.2, message="api-server ready")
        return process

    def start_central(self) -> None:
        """The central site: migrate, then scheduler, dag-processor and api-server."""
        self.airflow("db", "migrate")
        self.start_scheduler()
        self.start_dag_processor()
        self.start_api_server()

    def start_scheduler(self) -> Process:
        return self.start_process("scheduler", [str(self.bin / "airflow"), "scheduler"])

    def start_dag_processor(self) -> Process:
        return self.start_process("dag-processor", [str(self.bin / "airflow"), "dag-processor"])

    def start_triggerer(self) -> Process:
        """Deferred tasks wait here; no log server (nothing listens beyond 127.0.0.1)."""
        return self.start_process("triggerer", [str(self.bin / "airflow"), "triggerer",
                                                "--skip-serve-logs"])

    def start_edge_worker(self, name: str, queues: str = "default", concurrency: int = 2,
                          wait_ready: bool = True, via_airflow: bool = False,
                          team: str | None = None, **overrides: str) -> Process:
        """``celery -A edge_kombu worker`` (``via_airflow``: ``airflow edge worker``, as
        users of Airflow's edge executor start one, with ``--team-name`` if ``team``), with
        no usable database URL."""
        if via_airflow:
            command = [str(self.bin / "airflow"), "edge", "worker", "-q", queues,
                       "-c", str(concurrency), "-H", f"{name}@localhost"]
            command += ["--team-name", team] if team else []
        else:
            command = [str(self.bin / "celery"), "-A", "edge_kombu", "worker", "-Q", queues,
                       "-c", str(concurrency), "-n", f"{name}@localhost", "-l", "info"]
            overrides = {"EDGE_KOMBU_TEAM_NAME": team, **overrides} if team else overrides
        process = self.start_process(
            f"worker-{name}", command,
            **{"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": NO_DATABASE, **overrides},
        )
        if wait_ready:
            def ready() -> bool:
                if not process.alive():
                    raise AssertionError(f"edge worker {name} exited:\n{process.log()}")
                return " ready." in process.log()

            wait_for(ready, timeout=60, interval=0.1, message=f"edge worker {name} ready")
        return process

    def stop(self) -> None:
        """Stop workers first (they talk to the api-server on their way out), then the rest;
        each group all at once, as each takes seconds to shut down."""
        workers = [p for p in self.processes if "worker" in p.log_path.name]
        others = [p for p in self.processes if p not in workers]
        with ThreadPoolExecutor(max(1, len(self.processes))) as pool:
            list(pool.map(stop_celery_worker, workers))
            list(pool.map(_stop_other, others))
        shutil.rmtree(self.run_dir, ignore_errors=True)

    def logs(self) -> str:
        return "\n".join(f"===== {p.log_path.name}\n{p.log()[-6000:]}" for p in self.processes)

    # -- REST API ----------------------------------------------------------------------------

    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        if self._token is None:
            answer = requests.get(f"{self.base_url}/auth/token", timeout=10)
            answer.raise_for_status()
            self._token = answer.json()["access_token"]
        headers = {"Authorization": f"Bearer {self._token}", **kwargs.pop("headers", {})}
        return requests.request(method, f"{self.base_url}/api/v2{path}", headers=headers,
                                timeout=30, **kwargs)

    def wait_for_dag(self, dag_id: str, timeout: float = 90) -> None:
        wait_for(lambda: self.rest("GET", f"/dags/{dag_id}").status_code == 200,
                 timeout=timeout, interval=0.2, message=f"DAG {dag_id} parsed")

    def dag_run_state(self, dag_id: str, run_id: str) -> str | None:
        answer = self.rest("GET", f"/dags/{dag_id}/dagRuns/{run_id}")
        return answer.json()["state"] if answer.status_code == 200 else None

    def wait_for_dag_run(self, dag_id: str, run_id: str, timeout: float = 120) -> str:
        return wait_for(
            lambda: (state := self.dag_run_state(dag_id, run_id)) in ("success", "failed")
            and state,
            timeout=timeout, interval=0.2, message=f"DAG run {dag_id}/{run_id} finished",
        )

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
        answer = self.rest("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/"
                                  f"xcomEntries/{key}", params={"deserialize": True})
        answer.raise_for_status()
        return answer.json()["value"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        answer = self.rest("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        answer.raise_for_status()
        return answer.json()["task_instances"]
