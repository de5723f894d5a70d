"""``celery -A edge_kombu edge status | maintenance on|off | stop``: this host's edge workers.

Talks to the workers' control sockets (see :mod:`edge_kombu.worker.control`), so it
works while the edge API is unreachable. Registered with Celery through the
``celery.commands`` entry point; keep imports light, Celery loads this module for
every ``celery`` command.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from edge_kombu.protocol import WORKER_MAINTENANCE_MODE

#: Seconds between two looks while waiting (``--wait``).
POLL = 0.2


def _run_dir() -> Path:
    from edge_kombu.worker.settings import current

    return current().run_dir


def _read_pid(pidfile: Path) -> int:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"no process id in {pidfile}: {exc}") from None


def _pick(name: str | None, pidfile: Path | None = None) -> tuple[Path, dict]:
    """The worker named ``name`` (its node name, the part before or after ``@``), or the
    one whose process id is in ``pidfile``, or the only one running on this host."""
    from edge_kombu.worker import control

    run_dir = _run_dir()
    workers = control.live_sockets(run_dir)
    if not workers:
        raise click.ClickException(f"no edge worker is running on this host (looked in {run_dir})")
    names = ", ".join(status["name"] for _, status in workers)
    if pidfile is not None:
        pid = _read_pid(pidfile)
        matches = [(path, status) for path, status in workers if status["pid"] == pid]
        if not matches:
            raise click.ClickException(f"no edge worker with process id {pid} (from {pidfile}) "
                                       f"on this host (running: {names})")
        return matches[0]
    if name:
        matches = [(path, status) for path, status in workers if status["name"] == name] or [
            (path, status) for path, status in workers if name in status["name"].split("@", 1)]
        if not matches:
            raise click.ClickException(f"no edge worker named {name!r} on this host (running: "
                                       f"{names})")
        if len(matches) > 1:
            raise click.ClickException(f"{name!r} names {len(matches)} edge workers on this "
                                       f"host ({names}); give the full name")
        return matches[0]
    if len(workers) > 1:
        raise click.ClickException(f"{len(workers)} edge workers run on this host ({names}); "
                                   "pick one with -n/--name")
    return workers[0]


def _call(path: Path, payload: dict) -> dict:
    from edge_kombu.worker import control

    try:
        return control.request(path, payload)
    except control.ControlError as exc:
        raise click.ClickException(str(exc)) from None


def _echo(status: dict) -> None:
    click.echo(json.dumps(readable(status), indent=2))


def readable(status: dict, now: float | None = None) -> dict:
    """The worker's status with its times as people read them (ISO 8601 in UTC, as
    ``edge-kombu`` shows them, and the heartbeat's age in seconds) instead of Unix time."""
    from datetime import UTC, datetime

    shown = dict(status)
    beat = status.get("last_heartbeat")
    if isinstance(beat, int | float):
        shown["last_heartbeat"] = datetime.fromtimestamp(beat, UTC).isoformat(timespec="seconds")
        shown["heartbeat_age"] = f"{max((now or time.time()) - beat, 0):.1f}s"
    return shown


def _exited(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


_name_option = click.option("-n", "--name", help="The worker (its -n name, or the part "
                                                 "before or after @), when several run on "
                                                 "this host.")


def _pidfile_option(func):
    return click.option("--pidfile", type=click.Path(dir_okay=False, path_type=Path),
                        help="The worker whose process id is in this file (celery worker "
                             "--pidfile).")(func)


@click.group()
def edge() -> None:
    """This host's edge workers: status, maintenance, stop."""


@edge.command()
@_name_option
@_pidfile_option
def status(name: str | None, pidfile: Path | None) -> None:
    """The worker's state, queues, slots and running tasks, as JSON."""
    path, _ = _pick(name, pidfile)
    _echo(_call(path, {"command": "status"}))


@edge.command()
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.option("--comments", help="Why (shown centrally with the worker).")
@click.option("--wait", is_flag=True, help="With on: return once no task runs any more.")
@_name_option
@_pidfile_option
def maintenance(switch: str, comments: str | None, wait: bool, name: str | None,
                pidfile: Path | None) -> None:
    """Stop taking tasks and let running ones finish (on), or take tasks again (off)."""
    path, _ = _pick(name, pidfile)
    on = switch == "on"
    state = _call(path, {"command": "maintenance", "on": on, "comment": comments})
    shown = None
    while on and wait and state["state"] != WORKER_MAINTENANCE_MODE:
        if not state["maintenance"]:
            raise click.ClickException("maintenance was switched off while waiting")
        if state["held"] != shown:
            shown = state["held"]
            click.echo(f"{state['name']}: waiting for {shown} task(s) to finish...", err=True)
        time.sleep(POLL)
        state = _call(path, {"command": "status"})
    _echo(state)


@edge.command()
@click.option("--wait", is_flag=True, help="Return once the worker process exited.")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds running tasks may take to finish; then they are terminated. "
                   "Default: wait for them.")
@_name_option
@_pidfile_option
def stop(wait: bool, drain_timeout: float | None, name: str | None,
         pidfile: Path | None) -> None:
    """Stop taking tasks, let running ones finish, then exit (Celery's warm shutdown)."""
    path, _ = _pick(name, pidfile)
    state = _call(path, {"command": "stop", "drain_timeout": drain_timeout})
    _echo(state)
    if wait:
        click.echo(f"waiting for {state['name']} (pid {state['pid']}) to exit...", err=True)
        while not _exited(state["pid"]):
            time.sleep(POLL)
        click.echo(f"{state['name']} exited", err=True)

