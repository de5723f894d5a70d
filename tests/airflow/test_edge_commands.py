"""``airflow edge ...``: every command of the group against live edge workers and the
central database (Airflow's, holding the edge tables), with the names and options of
Airflow's edge provider.

One site: ``airflow db migrate`` and the api-server (the edge API), three edge workers
without database access: one started with ``airflow edge worker`` in the foreground, one
with ``airflow edge worker --daemon``, one with ``celery -A edge_kombu worker``. Local
commands are checked in the workers' own status; central ones in the rows and in what
the workers then do.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress

import psutil
import pytest
import yaml

from tests.airflow.site import NO_DATABASE, AirflowSite
from tests.helpers import wait_for

FAST = {"AIRFLOW__EDGE__HEARTBEAT_INTERVAL": "1"}


def _json(stdout: str):
    start = min(i for i in (stdout.find("["), stdout.find("{")) if i >= 0)
    return json.loads(stdout[start:])


class Edge:
    """``airflow edge ARGS`` in the site, parsed."""

    def __init__(self, site: AirflowSite) -> None:
        self.site = site

    def run(self, *args: str, check: bool = True, stdin: str | None = None,
            **env: str) -> subprocess.CompletedProcess:
        done = subprocess.run([str(self.site.bin / "airflow"), "edge", *args], input=stdin,
                              capture_output=True, text=True, timeout=120, cwd=self.site.tmp,
                              env=self.site.environ(**FAST, **env))
        if check:
            assert done.returncode == 0, (f"airflow edge {' '.join(args)} exited "
                                          f"{done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def fails(self, *args: str, expect: str, code: int = 1, stdin: str | None = None) -> None:
        done = self.run(*args, check=False, stdin=stdin)
        assert done.returncode == code and expect in done.stderr + done.stdout, (
            f"airflow edge {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}")

    def local_status(self, *which: str) -> dict:
        """``airflow edge status`` on a worker host (no database there)."""
        return _json(self.run("status", *which,
                              AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=NO_DATABASE).stdout)

    def workers(self, *filters: str) -> dict[str, dict]:
        rows = _json(self.run("list-workers", "-o", "json", *filters).stdout)
        return {row["worker_name"]: row for row in rows}


def worker_status(site: AirflowSite, name: str) -> dict:
    """A worker's own status, read from its control socket (cheaper than the CLI)."""
    from edge_kombu.worker import control

    [status] = [s for _, s in control.live_sockets(site.run_dir) if s["name"] == name]
    return status


def rows(site: AirflowSite) -> dict[str, dict]:
    """The workers' rows in the central database, read directly."""
    from edge_kombu.server.broker import Broker
    from edge_kombu.server.sql import SQL
    from edge_kombu.server.workers import WorkerRegistry

    sql = SQL.from_url(f"sqlite:///{site.db_path}")
    try:
        return {w["name"]: w for w in WorkerRegistry(sql, broker=Broker(sql)).list()}
    finally:
        sql.dispose()


@pytest.mark.timeout(480)  # some 25 Airflow CLI calls of ~2 s CPU each: slack for busy hosts
def test_airflow_edge_commands(tmp_path):
    site = AirflowSite(tmp_path)
    site.env.update(FAST)
    edge = Edge(site)
    daemon_pid = tmp_path / "daemon.pid"
    daemon_log = tmp_path / "daemon.log"
    try:
        site.airflow("db", "migrate")
        site.start_api_server()
        fore = site.start_process(
            "worker-cli-a",
            [str(site.bin / "airflow"), "edge", "worker", "-q", "remote,wisconsin_site",
             "-c", "3", "-H", "cli-a", "--team-name", "team-a"],
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=NO_DATABASE)
        plain = site.start_edge_worker("cli-c", queues="default", wait_ready=False)
        edge.run("worker", "-D", "--pid", str(daemon_pid), "--stdout", str(tmp_path / "d.out"),
                 "--stderr", str(tmp_path / "d.err"), "-l", str(daemon_log), "-u", "027",
                 "-H", "cli-d@daemon", "-c", "1",
                 AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=NO_DATABASE)  # returns: detached
        for process in (fore, plain):
            wait_for(lambda p=process: " ready." in p.log() or (not p.alive() and _died(p)),
                     timeout=60, interval=0.2, message=f"{process.log_path.name} ready")
        wait_for(lambda: daemon_log.exists() and " ready." in daemon_log.read_text(),
                 timeout=60, interval=0.2, message="daemon worker ready")

        # -- airflow edge worker: the options reached the Celery worker ------------------
        a = edge.local_status("-H", "cli-a")  # the part after @ names it
        # --team-name: the team's queues (edge_kombu.teams)
        assert (a["name"], a["queues"], a["slots_total"]) == (
            "celery@cli-a", ["team-a:remote", "team-a:wisconsin_site"], 3)
        assert a["pid"] == fore.pid  # the airflow process became the worker (exec)
        pid = int(daemon_pid.read_text())
        d = edge.local_status("--pid", str(daemon_pid))
        assert (d["name"], d["pid"], d["slots_total"]) == ("cli-d@daemon", pid, 1)
        assert d["queues"] == ["default"]  # [operators] default_queue
        assert os.stat(daemon_log).st_mode & 0o027 == 0  # -u 027

        # -- list-workers: every format, each with one filter ----------------------------
        with ThreadPoolExecutor(2) as pool:
            listed = pool.submit(edge.workers)
            by_queue = pool.submit(edge.run, "list-workers", "-o", "yaml", "-q",
                                   "wisconsin_site,nowhere")
            by_pattern = pool.submit(edge.run, "list-workers", "-o", "plain",
                                     "--worker-name-pattern", "cli-[bc]*")
            by_state = pool.submit(edge.run, "list-workers", "-s", "idle", "running")
        names = {"celery@cli-a", "cli-c@localhost", "cli-d@daemon"}
        listed = listed.result()
        assert set(listed) == names, listed
        # Airflow's console prints every value as text, in JSON too.
        assert listed["celery@cli-a"] == {
            **listed["celery@cli-a"], "state": "idle",
            "queues": "team-a:remote,team-a:wisconsin_site", "concurrency": "3",
            "free_concurrency": "3", "jobs_active": "0", "team_name": "team-a"}
        assert listed["cli-d@daemon"]["concurrency"] == "1"
        assert [r["worker_name"] for r in yaml.safe_load(by_queue.result().stdout)] == [
            "celery@cli-a"]
        plain_out = by_pattern.result().stdout
        assert "cli-c@localhost" in plain_out and "cli-d" not in plain_out and \
            "cli-a" not in plain_out, plain_out
        table = by_state.result().stdout
        assert all(name in table for name in names) and "free_concurrency" in table, table

        # -- local maintenance, seen centrally -------------------------------------------
        on = _json(edge.run("maintenance", "on", "-c", "disk swap", "-w", "-H", "cli-a",
                            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=NO_DATABASE).stdout)
        assert (on["state"], on["maintenance_comment"]) == ("maintenance mode", "disk swap")
        wait_for(lambda: rows(site)["celery@cli-a"]["maintenance_comment"] == "disk swap",
                 timeout=20, interval=0.2, message="the local maintenance seen centrally")
        off = _json(edge.run("maintenance", "off", "-H", "cli-a",
                             AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=NO_DATABASE).stdout)
        assert off["state"] == "idle" and not off["maintenance"]
        wait_for(lambda: not rows(site)["celery@cli-a"]["maintenance"],
                 timeout=20, interval=0.2, message="the local maintenance off seen centrally")

        # -- central maintenance, followed by the worker ---------------------------------
        edge.run("remote-edge-worker-request-maintenance", "-H", "cli-a", "-c", "rack move")
        wait_for(lambda: worker_status(site, "celery@cli-a")["state"] == "maintenance mode",
                 timeout=20, interval=0.1, message="cli-a in maintenance")
        edge.run("remote-edge-worker-update-maintenance-comment", "-H", "cli-a", "-c", "rack 7")
        status = wait_for(lambda: (s := worker_status(site, "celery@cli-a"))[
            "maintenance_comment"] == "rack 7" and s, timeout=20, interval=0.1,
            message="the new comment reached cli-a")
        assert status["state"] == "maintenance mode"
        edge.run("remote-edge-worker-exit-maintenance", "-H", "celery@cli-a")
        wait_for(lambda: worker_status(site, "celery@cli-a")["state"] == "idle",
                 timeout=20, interval=0.1, message="cli-a out of maintenance")

        # -- queues and concurrency at runtime -------------------------------------------
        edge.run("add-worker-queues", "-H", "cli-a", "-q", "extra1,extra2")
        wait_for(lambda: worker_status(site, "celery@cli-a")["consuming"] == [
            "team-a:remote", "team-a:wisconsin_site", "team-a:extra1", "team-a:extra2"],
            timeout=20, interval=0.1, message="cli-a consumes the added queues")
        edge.run("remove-worker-queues", "-H", "cli-a", "-q", "extra1,remote")
        edge.run("set-worker-concurrency", "-H", "cli-a", "-c", "5")
        wait_for(lambda: (s := worker_status(site, "celery@cli-a"))["consuming"] == [
            "team-a:wisconsin_site", "team-a:extra2"] and s["slots_total"] == 5,
            timeout=20, interval=0.1, message="cli-a follows queues and concurrency")

        # -- failures exit non-zero with one line ----------------------------------------
        with ThreadPoolExecutor(2) as pool:
            checks = [
                pool.submit(edge.fails, "remote-edge-worker-request-maintenance", "-H",
                            "nosuch", "-c", "x", expect="no worker named 'nosuch'"),
                pool.submit(edge.fails, "remove-remote-edge-worker", "-H", "cli-a",
                            expect="only offline or unknown workers can be removed"),
                pool.submit(edge.fails, "remote-edge-worker-update-maintenance-comment", "-H",
                            "cli-a", "-c", "x", expect="is not in maintenance"),
                pool.submit(edge.fails, "shutdown-all-workers", stdin="n\n",
                            expect="cancelled"),
            ]
        for check in checks:
            check.result()

        # -- stopping: local, one remote, all --------------------------------------------
        stopped = edge.run("stop", "-w", "--pid", str(daemon_pid),
                           AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=NO_DATABASE)
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"
        assert "exited" in stopped.stderr and not daemon_pid.exists()

        edge.run("shutdown-remote-edge-worker", "-H", "cli-c@localhost")
        wait_for(lambda: not plain.alive(), timeout=30, interval=0.2,
                 message="cli-c shut down")
        assert {n: w["state"] for n, w in rows(site).items()} == {
            "celery@cli-a": "idle", "cli-c@localhost": "offline", "cli-d@daemon": "offline"}
        edge.run("remove-remote-edge-worker", "-H", "cli-c@localhost")

        asked = edge.run("shutdown-all-workers", "-y").stdout
        assert "asked 1 worker(s) to shut down: celery@cli-a" in asked, asked
        wait_for(lambda: not fore.alive(), timeout=30, interval=0.2,
                 message="cli-a shut down")
        assert fore.proc.returncode == 0
        assert set(rows(site)) == {"celery@cli-a", "cli-d@daemon"}
        from edge_kombu.server.audit import AuditLog
        from edge_kombu.server.sql import SQL

        sql = SQL.from_url(f"sqlite:///{site.db_path}")
        audit = AuditLog(sql).recent(target="celery@cli-a")
        sql.dispose()
        assert [(e["action"], e["via"]) for e in reversed(audit)] == [
            # the local switch, reported by the worker
            ("maintenance on", "worker"), ("maintenance off", "worker"),
            ("maintenance on", "cli"), ("maintenance comment", "cli"),
            ("maintenance off", "cli"), ("queues", "cli"), ("queues", "cli"),
            ("concurrency", "cli"), ("shutdown", "cli")], audit
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{site.logs()}\n===== daemon log\n"
                             f"{daemon_log.read_text()[-4000:] if daemon_log.exists() else ''}"
                             ) from None
    finally:
        _stop_daemon(daemon_pid)
        site.stop()


def _died(process) -> bool:
    raise AssertionError(f"{process.log_path.name} exited:\n{process.log()}")


def _stop_daemon(pidfile) -> None:
    with suppress(OSError, ValueError):
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGTERM)
        with suppress(psutil.Error):
            psutil.Process(pid).wait(30)


@pytest.mark.sqlite_only
def test_edge_worker_options_become_the_celery_worker_command_line(airflow_in_process):
    """``airflow edge worker``'s options, parsed by Airflow's parser from the provider's
    hook, translate into ``celery -A edge_kombu worker`` options."""
    import sys

    from airflow.cli.cli_parser import DefaultHelpParser, _add_command
    from airflow.configuration import conf

    from edge_kombu.airflow.cli_local import celery_worker_argv
    from edge_kombu.airflow.provider import get_cli_commands

    parser = DefaultHelpParser(prog="airflow")
    subparsers = parser.add_subparsers(dest="subcommand")
    for group in get_cli_commands():
        _add_command(subparsers, group)
    args = parser.parse_args(["edge", "worker", "-q", "remote, wisconsin_site", "-c", "3",
                              "-H", "site-1", "--team-name", "t", "-v"])
    celery = [sys.executable, "-m", "celery", "-A", "edge_kombu", "worker"]
    assert celery_worker_argv(args, conf, pidfile="/run/w.pid", logfile="/var/w.log") == [
        *celery, "-c", "3", "-l", "DEBUG", "-Q", "remote,wisconsin_site", "-n", "site-1",
        "--pidfile", "/run/w.pid", "--logfile", "/var/w.log"]
    args = parser.parse_args(["edge", "worker"])
    assert celery_worker_argv(args, conf) == [*celery, "-c", "8", "-l", "INFO"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW__EDGE__WORKER_CONCURRENCY", "5")
        assert celery_worker_argv(args, conf)[6:8] == ["-c", "5"]
    for bad in (["worker", "-c", "0"], ["set-worker-concurrency", "-H", "w", "-c", "-2"],
                ["maintenance", "sideways"], ["add-worker-queues", "-H", "w"]):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(["edge", *bad])
        assert exited.value.code == 2, bad
