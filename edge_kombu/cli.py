"""The ``edge-kombu`` command: run the API, migrate the database, manage worker tokens."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC
from pathlib import Path

import click

from edge_kombu import __version__
from edge_kombu.protocol import WORKER_STATES
from edge_kombu.server.config import DEFAULT_LEASE_TIMEOUT, DEFAULT_MAX_WAIT
from edge_kombu.server.jobs import STATES as JOB_STATES


def _db_option(func):
    return click.option(
        "--db",
        "db_url",
        envvar="EDGE_KOMBU_DB_URL",
        help="SQLAlchemy URL of the database (default: Airflow's, else a SQLite file "
        "under $AIRFLOW_HOME).",
    )(func)


def _ready_engine(db_url: str | None):
    """An engine on the database every command uses (``--db``, ``EDGE_KOMBU_DB_URL``,
    Airflow's, else the default SQLite file) once its edge tables are up to date; else one
    line naming the database and what to do, exit 1. The default file is named on stderr:
    a token created there is not seen by an API serving another database."""
    from edge_kombu.server.db import DatabaseNotReady, check_schema, resolve_db
    from edge_kombu.server.sql import create_db_engine

    url, default_file = resolve_db(db_url)
    engine = create_db_engine(url, pool_size=1)
    try:
        check_schema(engine, url)
    except DatabaseNotReady as exc:
        engine.dispose()
        _fail(str(exc))
    if default_file is not None:
        click.echo(f"using the default database {default_file} (set EDGE_KOMBU_DB_URL or "
                   "--db to choose another)", err=True)
    return engine


def _sql(db_url: str | None):
    from edge_kombu.server.sql import SQL

    return SQL(_ready_engine(db_url))


def _credentials(db_url: str | None):
    from edge_kombu.server.credentials import Credentials

    return Credentials(_sql(db_url))


def _actor_option(func):
    return click.option(
        "--actor",
        help="Who acts, as the audit log records it (default: your OS user name).",
    )(func)


def _actor(name: str | None):
    """The audit log's actor of this command: ``--actor``, else the OS user."""
    import getpass
    import os

    from edge_kombu.server.audit import Actor

    if not name:
        try:
            name = getpass.getuser()
        except (OSError, KeyError):  # no login name and no passwd entry (some containers)
            name = f"uid {os.getuid()}"
    return Actor(name, "cli")


def _audit(db_url: str | None):
    from edge_kombu.server.audit import AuditLog

    return AuditLog(_sql(db_url))


def _fail(message: str) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


@click.group()
@click.version_option(__version__, prog_name="edge-kombu")
def main() -> None:
    """edge-kombu: Celery over HTTPS for workers at remote sites."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)


@main.command()
@click.option("--bind", default="127.0.0.1:8080", show_default=True, help="HOST:PORT to listen on.")
@_db_option
@click.option("--workers", default=1, show_default=True, help="Server processes.")
@click.option("--certfile", help="TLS certificate: serve HTTPS.")
@click.option("--keyfile", help="TLS private key.")
@click.option("--ca-certs", help="CA bundle to verify client certificates.")
@click.option("--require-client-cert", is_flag=True, help="Refuse clients without a certificate.")
@click.option("--lease-timeout", type=float,
              help=f"Seconds a silent consumer keeps its leases (default: "
              f"$EDGE_KOMBU_LEASE_TIMEOUT, else {DEFAULT_LEASE_TIMEOUT:g}).")
@click.option("--max-wait", type=float,
              help=f"Longest server-side wait of a consume in seconds (default: "
              f"$EDGE_KOMBU_MAX_WAIT, else {DEFAULT_MAX_WAIT:g}).")
@click.option("--max-body-bytes", type=int, help="Largest request body accepted.")
@click.option("--access-log", is_flag=True, help="Log every request.")
def api(bind, db_url, workers, certfile, keyfile, ca_certs, require_client_cert,
        lease_timeout, max_wait, max_body_bytes, access_log) -> None:
    """Serve the edge API (gunicorn, gevent workers)."""
    from edge_kombu.server.config import ServerConfig
    from edge_kombu.server.serve import APIServer

    engine = _ready_engine(db_url)
    url = engine.url.render_as_string(hide_password=False)
    engine.dispose()
    try:
        config = ServerConfig.from_environment(
            url, lease_timeout=lease_timeout, max_wait=max_wait, max_body_bytes=max_body_bytes
        )
    except ValueError as exc:
        _fail(str(exc))
    if bool(certfile) != bool(keyfile):
        _fail("--certfile and --keyfile go together")
    APIServer(
        config,
        bind=bind,
        workers=workers,
        certfile=certfile,
        keyfile=keyfile,
        ca_certs=ca_certs,
        require_client_cert=require_client_cert,
        access_log=access_log,
    ).run()


@main.group()
def db() -> None:
    """Database schema."""


@db.command()
@_db_option
def migrate(db_url) -> None:
    """Create or upgrade the edge tables (Alembic, own version table)."""
    from edge_kombu.server.db import (
        DatabaseNotReady,
        current_revision,
        describe,
        reachable_revision,
        resolve_db_url,
    )
    from edge_kombu.server.db import migrate as run
    from edge_kombu.server.sql import create_db_engine

    url = resolve_db_url(db_url)
    engine = create_db_engine(url, pool_size=1)
    try:
        reachable_revision(engine, url)
    except DatabaseNotReady as exc:
        _fail(str(exc))
    run(engine)
    click.echo(f"edge tables at revision {current_revision(engine)} in {describe(url)}")


@main.group()
def token() -> None:
    """API credentials: worker tokens with a scope, central and admin tokens (stored hashed)."""


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str | None) -> float | None:
    """``90s``, ``30m``, ``12h``, ``30d``, ``2w`` or plain seconds, as seconds."""
    if text is None:
        return None
    text = text.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], None)
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        seconds = 0
    if not seconds > 0:
        _fail(f"--expires: {text!r} is not a duration such as 3600, 90m, 12h, 30d or 2w")
    return seconds


def _split(values: tuple[str, ...]) -> list[str]:
    return [name for value in values for name in value.split(",") if name.strip()]


@token.command("create")
@click.option("--worker", help="Worker name or pattern (e.g. 'wisconsin-*') the token is for.")
@click.option("--central", help="Name of a central credential (scheduler, Flower, celery "
              "inspect/control at the centre): may do everything.")
@click.option("--admin", help="Name of an admin credential: the management API "
              "(/api/v1/manage/) only, no broker routes.")
@click.option("--queues", multiple=True, help="Queues the worker may consume and publish to, "
              "comma-separated (default: celery).")
@click.option("--publish", multiple=True, help="Further queues the worker may publish to "
              "(retries, chord callbacks), comma-separated.")
@click.option("--team", help="Airflow team of the worker (multi-team mode): its --queues and "
              "--publish are that team's queues, so it reaches no other team's work.")
@click.option("--expires", help="Lifetime: seconds, or 90m, 12h, 30d, 2w (default: never).")
@click.option("--no-token", is_flag=True, help="Record the worker's scope only, for its "
              "shared-secret or OIDC JWTs; issue no token.")
@_actor_option
@_db_option
def token_create(worker, central, admin, queues, publish, team, expires, no_token, actor,
                 db_url) -> None:
    """Issue a token; prints only the token on stdout."""
    from edge_kombu.errors import EdgeError
    from edge_kombu.protocol import MAX_NAME_LENGTH

    if sum(map(bool, (worker, central, admin))) != 1:
        _fail("give one of --worker NAME, --central NAME or --admin NAME")
    name = worker or central or admin
    kind = "worker" if worker else "central" if central else "admin"
    if len(name) > MAX_NAME_LENGTH:
        _fail(f"the name must be 1 to {MAX_NAME_LENGTH} characters")
    if not worker and (queues or publish or no_token or team):
        _fail(f"--queues, --publish, --team and --no-token are for --worker; a {kind} token has no "
              "queue scope")
    try:
        issued = _credentials(db_url).create(
            name, kind=kind,
            queues=_split(queues) if queues else None, publish=_split(publish),
            expires=_duration(expires), issue_token=not no_token, actor=_actor(actor),
            team=team,
        )
    except EdgeError as exc:
        _fail(exc.message)
    if issued:
        click.echo(issued)
    else:
        click.echo(f"recorded the scope of {name} (no token issued)", err=True)


def _when(ts: float | None) -> str:
    from datetime import datetime

    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_db_option
def token_list(as_json, db_url) -> None:
    """List the credentials: worker, queues, publish, expiry, last use (never the tokens)."""
    rows = _credentials(db_url).list()
    if as_json:
        click.echo(json.dumps(rows))
        return
    click.echo(_table(
        [[row["name"], row["kind"] + ("" if row["token"] else " (no token)"),
          ",".join(row["queues"]) or "-", ",".join(row["publish"]) or "-",
          _when(row["expires_at"]), _when(row["last_used_at"]), _when(row["created_at"])]
         for row in rows],
        ["NAME", "KIND", "QUEUES", "PUBLISH", "EXPIRES (UTC)", "LAST USED", "CREATED"],
    ))


@token.command("revoke")
@click.argument("name")
@_actor_option
@_db_option
def token_revoke(name, actor, db_url) -> None:
    """Revoke NAME's token; effective on its next request (a waiting consume within 1 s)."""
    from edge_kombu.errors import EdgeError

    try:
        _credentials(db_url).revoke(name, actor=_actor(actor))
    except EdgeError as exc:
        _fail(exc.message)
    click.echo(f"revoked the token of {name}", err=True)


def _registry(db_url: str | None):
    from edge_kombu.server.broker import Broker
    from edge_kombu.server.config import DEFAULT_WORKER_TIMEOUT, env_float
    from edge_kombu.server.workers import WorkerRegistry

    timeout = env_float("EDGE_KOMBU_WORKER_TIMEOUT", DEFAULT_WORKER_TIMEOUT)
    sql = _sql(db_url)
    return WorkerRegistry(sql, broker=Broker(sql), worker_timeout=timeout)


def _edge_call(func, *args, **kwargs):
    from edge_kombu.errors import EdgeError

    try:
        return func(*args, **kwargs)
    except EdgeError as exc:
        _fail(exc.message)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(v)) for v in column) for column in zip(headers, *rows, strict=True)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True))
             for row in [headers, *rows]]
    return "\n".join(line.rstrip() for line in lines)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@click.option("--state", "states", multiple=True, type=click.Choice(WORKER_STATES),
              help="Only workers in this state (repeatable).")
@click.option("--pattern", help="Only workers whose name matches this glob, e.g. 'site-*'.")
@click.option("--queues", "queues", multiple=True,
              help="Only workers serving one of these queues (comma-separated, repeatable).")
@_db_option
def workers(as_json, states, pattern, queues, db_url) -> None:
    """List the workers (edge workers, and plain Celery workers marked KIND celery) with
    state, queues, slots and last heartbeat."""
    rows = _registry(db_url).list(states=states, pattern=pattern, queues=_split(queues))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(
        [[w["name"], w["kind"], w["state"], ",".join(w["queues"]),
          f"{w['slots_used']}/{w['slots_total']}", len(w["running"]), f"{w['heartbeat_age']}s",
          w["maintenance_comment"] or "", w["version_warning"] or "", _bundles_held(w)]
         for w in rows],
        ["NAME", "KIND", "STATE", "QUEUES", "SLOTS", "RUNNING", "HEARTBEAT", "MAINTENANCE",
         "WARNING", "BUNDLES"],
    ))


def _bundles_held(worker: dict) -> str:
    """The DAG bundle versions a worker holds (newest of each, from its heartbeat)."""
    versions = worker.get("versions") if isinstance(worker.get("versions"), dict) else {}
    return ",".join(f"{key[len('bundle '):]}@{str(value).split(' ')[0][:20]}"
                    for key, value in sorted(versions.items())
                    if key.startswith("bundle ") and value)


def _queue_warnings(q: dict) -> str:
    """The Queues page's warnings, in a table cell."""
    warnings = []
    if q["too_big"]:
        warnings.append(f"a task needs {q['max_slots']} slots; the largest worker serving "
                        f"this queue has {q['largest_worker_slots']}")
    if q["unserved"]:
        warnings.append("tasks wait and no live worker serves this queue")
    return "; ".join(warnings)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_db_option
def queues(as_json, db_url) -> None:
    """List queues: depth, oldest message, slots demanded, consumers, tasks too big to run."""
    overview = _registry(db_url).queue_report()
    if as_json:
        click.echo(json.dumps(overview, indent=2))
        return
    click.echo(_table(
        [[q["name"], q["ready"], q["leased"],
          "" if q["oldest_age"] is None else f"{q['oldest_age']}s",
          q["max_slots"] or "", q["largest_worker_slots"] or "", q["consumers"],
          _queue_warnings(q)] for q in overview],
        ["QUEUE", "READY", "LEASED", "OLDEST", "MAX SLOTS", "WORKER SLOTS", "CONSUMERS", "WARNING"],
    ))


@main.command()
@click.option("--state", type=click.Choice(JOB_STATES), help="Only jobs in this state.")
@click.option("--queue", help="Only jobs of this queue.")
@click.option("--worker", "worker_name", help="Only jobs of this worker.")
@click.option("--search", help="Text in the task id, name, DAG, task or run id.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--before", type=int, help="Page cursor: the NEXT value of the previous page.")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_db_option
def jobs(state, queue, worker_name, search, limit, before, as_json, db_url) -> None:
    """List tasks, newest first: state, queue, slots, worker, times (the Jobs page)."""
    from datetime import datetime

    from edge_kombu.server.jobs import JobHistory

    page = JobHistory(_sql(db_url)).page(state=state, queue=queue, worker=worker_name, text=search,
                                    before=before, limit=limit)
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return

    def when(ts):
        return "" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%m-%d %H:%M:%S")

    def airflow(job):
        ti = job.get("airflow")
        return f"{ti['dag_id']}.{ti['task_id']} {ti['run_id']}" if ti else ""

    click.echo(_table(
        [[j["task_id"], j["name"], airflow(j), j["queue"], j["slots"], j["state"],
          j["worker"] or "", when(j["queued_at"]), when(j["started_at"] or j["received_at"]),
          when(j["finished_at"])] for j in page["jobs"]],
        ["TASK ID", "NAME", "AIRFLOW", "QUEUE", "SLOTS", "STATE", "WORKER", "QUEUED (UTC)",
         "STARTED", "FINISHED"],
    ))
    if page["next"] is not None:
        click.echo(f"more: --before {page['next']}")


@main.group()
def worker() -> None:
    """Steer one edge worker; takes effect at its next heartbeat."""


def _comments_option(func):
    return click.option("--comments", help="Why, for the audit log.")(func)


@worker.command("maintenance")
@click.argument("name")
@click.argument("switch", type=click.Choice(["on", "off"]))
@click.option("--comments", help="Why (required for on).")
@_actor_option
@_db_option
def worker_maintenance(name, switch, comments, actor, db_url) -> None:
    """Put NAME into maintenance (stop taking tasks, finish running ones), or take it out."""
    row = _edge_call(_registry(db_url).request_maintenance, name, switch == "on", comments,
                     actor=_actor(actor))
    click.echo(f"{name}: {row['state']}")


@worker.command("comment")
@click.argument("name")
@click.option("--comments", required=True, help="The new maintenance comment.")
@_actor_option
@_db_option
def worker_comment(name, comments, actor, db_url) -> None:
    """Change the maintenance comment of NAME, which stays in maintenance."""
    row = _edge_call(_registry(db_url).update_maintenance_comment, name, comments,
                     actor=_actor(actor))
    click.echo(f"{name}: {row['state']}: {row['maintenance_comment']}")


@worker.command("shutdown")
@click.argument("name")
@_comments_option
@_actor_option
@_db_option
def worker_shutdown(name, comments, actor, db_url) -> None:
    """Ask NAME to finish its running tasks and exit."""
    row = _edge_call(_registry(db_url).request_shutdown, name, actor=_actor(actor),
                     comment=comments)
    click.echo(f"{name}: {row['state']}")


@worker.command("shutdown-all")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@_comments_option
@_actor_option
@_db_option
def worker_shutdown_all(yes, comments, actor, db_url) -> None:
    """Ask every running worker to finish its running tasks and exit."""
    if not yes:
        click.confirm("Shut down every edge worker?", abort=True)
    names = _registry(db_url).request_shutdown_all(actor=_actor(actor), comment=comments)
    click.echo(f"asked {len(names)} worker(s) to shut down" + (f": {', '.join(names)}"
                                                               if names else ""))


@worker.command("queues")
@click.argument("name")
@click.option("--add", multiple=True, help="Queue to consume as well (repeatable).")
@click.option("--remove", multiple=True, help="Queue to stop consuming (repeatable).")
@_comments_option
@_actor_option
@_db_option
def worker_queues(name, add, remove, comments, actor, db_url) -> None:
    """Change the queues NAME consumes."""
    if not add and not remove:
        _fail("give --add and/or --remove")
    row = _edge_call(_registry(db_url).change_queues, name, add, remove, actor=_actor(actor),
                     comment=comments)
    click.echo(f"{name}: queues {','.join(row['desired_queues'])}")


@worker.command("concurrency")
@click.argument("name")
@click.argument("slots", type=int)
@_comments_option
@_actor_option
@_db_option
def worker_concurrency(name, slots, comments, actor, db_url) -> None:
    """Set NAME's slot budget (its concurrency)."""
    _edge_call(_registry(db_url).set_concurrency, name, slots, actor=_actor(actor),
               comment=comments)
    click.echo(f"{name}: concurrency {slots}")


@worker.command("remove")
@click.argument("name")
@_comments_option
@_actor_option
@_db_option
def worker_remove(name, comments, actor, db_url) -> None:
    """Forget NAME (only when offline or unknown)."""
    _edge_call(_registry(db_url).remove, name, actor=_actor(actor), comment=comments)
    click.echo(f"removed {name}")


@main.command()
@click.option("--worker", "target", help="Only actions on this worker (or token) name.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 500))
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
@_db_option
def audit(target, limit, as_json, db_url) -> None:
    """Who did what: central actions on workers and tokens, newest first."""
    from datetime import datetime

    entries = _audit(db_url).recent(target=target, limit=limit)
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    def one_line(text: str | None) -> str:
        return " ".join((text or "").split())  # a comment's line breaks would break the table

    click.echo(_table(
        [[datetime.fromtimestamp(e["at"], UTC).strftime("%Y-%m-%d %H:%M:%S"),
          one_line(f"{e['actor']} ({e['via']})"), e["action"], one_line(e["target"]),
          one_line(e["detail"]), one_line(e["comment"])] for e in entries],
        ["TIME (UTC)", "ACTOR", "ACTION", "TARGET", "DETAIL", "COMMENT"],
    ))


@main.command()
@click.option("--celery", "plain_celery", is_flag=True,
              help="Run the plain Celery demo even where Airflow is installed.")
@click.option("--once", is_flag=True,
              help="Airflow demo: stop everything once the DAG run ends (default: wait for "
              "Ctrl-C, so the UI stays up).")
@click.option("--home", type=click.Path(file_okay=False, path_type=Path),
              help="Airflow demo: its AIRFLOW_HOME (default $EDGE_KOMBU_DEMO_HOME, else "
              "~/airflow-edge-demo).")
@_db_option
def demo(plain_celery, once, home, db_url) -> None:
    """Show edge-kombu working, on SQLite, and stop everything it started at the end.

    With Airflow installed: Airflow (api-server with the edge API, scheduler,
    dag-processor) and one edge worker run the edge_demo DAG. Without Airflow, or with
    --celery: the edge API, one Celery worker and a few tasks (--db applies here).
    """
    import importlib.util

    if plain_celery or importlib.util.find_spec("airflow") is None:
        from edge_kombu.demo import run_demo

        if not plain_celery:
            click.echo("Airflow is not installed: running the plain Celery demo "
                       "(pip install 'edge-kombu[airflow]' for the Airflow one)")
        run_demo(db_url)
        return
    from edge_kombu.airflow.demo import default_home, run_airflow_demo

    run_airflow_demo((home or default_home()).resolve(), once)


if __name__ == "__main__":
    main()
