"""Real ``celery -A edge_kombu worker`` processes and the ``celery edge`` command for tests.

The workers load their test tasks from :mod:`tests.edge_tasks` through
``EDGE_KOMBU_INCLUDE``, heartbeat every second and keep their control sockets in
the test's own run directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from edge_kombu.worker import control
from tests.helpers import BIN, ROOT, Process, wait_for

HEARTBEAT_INTERVAL = 1.0


def held_task(send, tmp_path, label: str):
    """A task that runs until its release file appears; returns (result, marker, release)."""
    marker, release = tmp_path / f"{label}.started", tmp_path / f"{label}.release"
    return send("hold", str(marker), str(release)), marker, release


def heartbeats_pass(worker, count: int = 2) -> None:
    """Wait until the worker sent ``count`` more heartbeats (it had time to act)."""
    for _ in range(count):
        last = worker.status()["last_heartbeat"]
        wait_for(lambda last=last: worker.status()["last_heartbeat"] > last,
                 timeout=10 * HEARTBEAT_INTERVAL, message="next heartbeat")


def edge_env(tmp: Path, api_url: str | None, token: str | None, **extra: str) -> dict:
    """The environment of an edge worker and of ``celery edge`` next to it."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AIRFLOW__", "EDGE_KOMBU_"))}
    env.update(
        AIRFLOW_HOME=str(tmp / "airflow"),  # no airflow.cfg: only the variables below count
        EDGE_KOMBU_RUN_DIR=str(tmp / "run"),
        EDGE_KOMBU_INCLUDE="tests.edge_tasks",
        AIRFLOW__EDGE__HEARTBEAT_INTERVAL=str(HEARTBEAT_INTERVAL),
        PYTHONPATH=str(ROOT),
    )
    if api_url:
        env["AIRFLOW__EDGE__API_URL"] = api_url
    if token:
        env["EDGE_KOMBU_TOKEN"] = token
    env.update(extra)
    return env


def celery_edge(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``celery -A edge_kombu edge ARGS`` to the end."""
    return subprocess.run([str(BIN / "celery"), "-A", "edge_kombu", "edge", *args], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def last_json(text: str) -> dict:
    """The JSON object a ``celery edge`` command printed."""
    return json.loads(text[text.index("{"):])


class EdgeWorker(Process):
    """``celery -A edge_kombu worker -n NAME@localhost -Q QUEUES -c N``."""

    def __init__(self, tmp: Path, env: dict, *, name: str, queues: str = "remote",
                 concurrency: int = 2, pool: str | None = None) -> None:
        self.name = name
        self.hostname = f"{name}@localhost"
        self.edge_env = env
        args = [str(BIN / "celery"), "-A", "edge_kombu", "worker", "-n", self.hostname,
                "-Q", queues, "-c", str(concurrency),
                "-l", os.environ.get("EDGE_TEST_WORKER_LOGLEVEL", "info")]
        if pool:  # Celery's way to name a pool of one's own
            args += ["-P", "custom"]
            env = {**env, "CELERY_CUSTOM_WORKER_POOL": pool}
        log_path = tmp / f"edge-worker-{name}.log"
        restarts = 1
        while log_path.exists():  # a restart under the same name gets its own log
            restarts += 1
            log_path = tmp / f"edge-worker-{name}-{restarts}.log"
        super().__init__(args, log_path, env=env)

    def start(self, wait_ready: bool = True) -> EdgeWorker:
        super().start()
        if wait_ready:
            wait_for(self.ready, timeout=60, message=f"edge worker {self.name} ready")
        return self

    def ready(self) -> bool:
        if not self.alive():
            raise AssertionError(f"edge worker {self.name} exited:\n{self.log()}")
        return " ready." in self.log()

    def terminate(self) -> None:
        """Warm shutdown: SIGTERM to the main process only, as an init system sends it.

        (SIGTERM to the whole group also kills the pool's processes, one of them may
        hold the pool's queue lock, and Celery then hangs at exit until it is killed.)
        """
        if self.alive():
            os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout: float = 20.0) -> None:
        self.terminate()
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        super().stop(5.0)  # the group, should anything be left

    @property
    def socket(self) -> Path:
        return control.endpoint(Path(self.edge_env["EDGE_KOMBU_RUN_DIR"]), self.hostname,
                                control.channel(self.edge_env))

    def status(self) -> dict:
        """The worker's status straight from its socket (what ``celery edge status`` shows)."""
        return control.request(self.socket, {"command": "status"})

    def wait_state(self, state: str, timeout: float = 30.0) -> dict:
        return wait_for(lambda: (s := self.status())["state"] == state and s,
                        timeout=timeout, message=f"{self.name} in state {state!r}")

    def edge(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
        done = celery_edge(self.edge_env, *args, "-n", self.hostname)
        if ok:
            assert done.returncode == 0, f"celery edge {args}: {done.stdout}\n{done.stderr}"
        return done

    def edge_popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(BIN / "celery"), "-A", "edge_kombu", "edge", *args, "-n", self.hostname],
            env=self.edge_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )


#: What a host without fork and Unix sockets (Windows) uses, forced on Linux.
NO_FORK_POOL = "edge_kombu.worker.pool:ThreadSlotPool"


@pytest.fixture
def platform(request) -> str:
    """``posix`` (prefork slot pool, Unix control sockets) or ``windows`` (thread slot
    pool, loopback TCP control): parametrize with ``indirect=True`` to run both."""
    return getattr(request, "param", "posix")


@pytest.fixture
def env_for(tmp_path, token, platform):
    def make(api, **extra: str) -> dict:
        if platform == "windows":
            extra = {"EDGE_KOMBU_CONTROL": "tcp", **extra}
        return edge_env(tmp_path, api.url if api else None, token, **extra)

    return make


@pytest.fixture
def edge_workers(tmp_path, env_for, request, api_factory, platform):
    """``edge_workers(name, env=None, ...)``: a started worker (against the ``api`` fixture
    unless ``env`` says otherwise), stopped at the end of the test, before the API servers."""
    started: list[EdgeWorker] = []

    def start(name: str, *, env: dict | None = None, wait_ready: bool = True,
              **kwargs) -> EdgeWorker:
        env = env or env_for(request.getfixturevalue("api"))
        if platform == "windows":
            kwargs.setdefault("pool", NO_FORK_POOL)
        worker = EdgeWorker(tmp_path, env, name=name, **kwargs)
        started.append(worker)
        return worker.start(wait_ready=wait_ready)

    yield start
    for worker in started:  # all at once: each warm shutdown takes a few seconds
        worker.terminate()
    for worker in started:
        worker.stop()


@pytest.fixture
def sender(token):
    """``sender(api)`` gives ``publish(task, *args, queue=..., slots=...)`` for tests.edge_tasks."""
    from celery import Celery

    apps = []

    def for_api(api):
        url = api.url.replace("http://", f"edge+http://:{token}@")
        app = Celery(f"edge_test_sender{len(apps)}", broker=url, backend=url,
                     set_as_current=False)
        app.conf.update(task_acks_late=True, broker_connection_retry=False)
        apps.append(app)

        def publish(task: str, *args, queue: str = "remote", slots: int | None = None):
            headers = {"pool_slots": slots} if slots else None
            return app.send_task(f"tests.edge_tasks.{task}", args=args, queue=queue,
                                 headers=headers)

        return publish

    yield for_api
    for app in apps:
        app.close()


@pytest.fixture
def send(sender, api):
    return sender(api)


def queue_depth(broker, name: str) -> dict:
    """``{"ready": n, "leased": n}`` of a queue on the server."""
    for queue in broker.queue_overview():
        if queue["name"] == name:
            return {"ready": queue["ready"], "leased": queue["leased"]}
    return {"ready": 0, "leased": 0}
