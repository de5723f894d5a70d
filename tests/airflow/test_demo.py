"""The README's first command with Airflow installed: ``edge-kombu demo`` brings up Airflow
and an edge worker on SQLite, runs ``edge_demo`` through the edge worker, prints what ran
where and the UI address, and leaves nothing running when interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from contextlib import suppress
from urllib.parse import parse_qs, urlsplit

import psutil
import pytest
import requests

from tests.helpers import BIN, wait_for

pytestmark = pytest.mark.timeout(420)


class Demo:
    """``edge-kombu demo`` in its own session, its output collected in a file."""

    def __init__(self, tmp_path) -> None:
        self.out = tmp_path / "demo.out"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "EDGE"))}
        env.update(HOME=str(tmp_path), PATH=f"{BIN}:/usr/bin:/bin")
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([str(BIN / "edge-kombu"), "demo"], env=env, cwd=tmp_path,
                                         stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.home = tmp_path / "airflow-edge-demo"

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for_line(self, text: str, timeout: float) -> None:
        def printed() -> bool:
            assert self.proc.poll() is None or text in self.output(), (
                f"demo exited {self.proc.returncode}:\n{self.output()}")
            return text in self.output()

        wait_for(printed, timeout=timeout, interval=0.2, message=f"demo prints {text!r}")

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def interrupt(self) -> int:
        """Ctrl-C as a terminal sends it; the demo's exit code."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(90)

    def kill(self) -> None:
        """The demo and every process it started (each child has a session of its own)."""
        with suppress(psutil.NoSuchProcess):
            for process in [*self.descendants(), psutil.Process(self.proc.pid)]:
                with suppress(psutil.NoSuchProcess):
                    process.kill()
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def assert_all_gone(processes: list[psutil.Process]) -> None:
    assert processes, "the demo had started no child processes"
    alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {[(p.pid, p.cmdline()) for p in alive]}"


def test_demo_runs_the_dag_on_the_edge_worker_and_stops_everything_on_ctrl_c(tmp_path):
    demo = Demo(tmp_path)
    try:
        demo.wait_for_line("Ctrl-C stops everything", timeout=360)
        out = demo.output()
        # The UI address comes first, so a user can watch the run.
        assert out.index("Airflow UI:") < out.index("triggered edge_demo run"), out
        assert "edge_demo demo_" in out and ": success (" in out, out
        rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
        for task in ("hello", "two_slots", "square[0]", "square[1]", "square[2]"):
            assert " success " in rows[task] and "edge worker demo-edge@" in rows[task], out
        assert " 2 " in rows["two_slots"], out  # pool_slots travel with the task
        assert "LocalExecutor" in rows["summary"] and "central site" in rows["summary"], out

        ui = next(line for line in out.splitlines() if line.startswith("Airflow UI:"))
        url = ui.split()[2]
        assert requests.get(f"{url}/api/v2/version", timeout=10).ok  # the UI stays up
        run_id = out.split("triggered edge_demo run ")[1].split()[0]
        shows_itself_as_it_should(demo, url, ui.split("password ")[1].rstrip(")"), run_id)
        # The edge worker had no database: its URL points at a file that cannot exist.
        assert (demo.home / "edge-worker").is_dir()

        children = demo.descendants()
        assert demo.interrupt() == 0, demo.output()
        assert "stopped everything the demo started" in demo.output()
        assert_all_gone(children)
    finally:
        demo.kill()


def shows_itself_as_it_should(demo: Demo, url: str, password: str, run_id: str) -> None:
    """Edge task logs in Airflow's REST API, a live triggerer, the pages behind Airflow's
    sign-in, and nothing listening beyond loopback."""
    token = requests.post(f"{url}/auth/token", json={"username": "admin", "password": password},
                          timeout=10).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    log = requests.get(f"{url}/api/v2/dags/edge_demo/dagRuns/{run_id}/taskInstances/hello/"
                       "logs/1", headers=headers, timeout=30)
    assert log.ok, log.text
    text = json.dumps(log.json()["content"])
    assert "hello from edge worker demo-edge@" in text, text[:2000]  # the task's own print
    assert "Log file not found" not in text and "Could not read served logs" not in text, text

    health = requests.get(f"{url}/api/v2/monitor/health", timeout=10).json()
    assert health["triggerer"]["status"] == "healthy", health

    page = f"{url}/edge/ui/workers"
    browser = requests.get(page, timeout=30, allow_redirects=False,
                           headers={"Accept": "text/html,application/xhtml+xml"})
    assert browser.status_code == 302, browser.text
    login = browser.headers["Location"]
    assert "/login" in login and parse_qs(urlsplit(login).query)["next"] == [page], login
    assert requests.get(page, timeout=30).status_code == 401  # a script: says what to do

    listening = {(c.laddr.ip, c.laddr.port)
                 for p in [psutil.Process(demo.proc.pid), *demo.descendants()]
                 for c in _connections(p) if c.status == psutil.CONN_LISTEN}
    assert listening and all(ip == "127.0.0.1" for ip, _ in listening), listening


def _connections(process: psutil.Process) -> list:
    with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
        return process.net_connections(kind="inet")
    return []


def test_ctrl_c_while_starting_stops_what_was_started(tmp_path):
    demo = Demo(tmp_path)
    try:
        demo.wait_for_line("api-server:", timeout=240)  # the edge worker is starting
        children = demo.descendants()
        demo.interrupt()
        assert "stopped everything the demo started" in demo.output()
        assert_all_gone(children)
    finally:
        demo.kill()
