"""``airflow edge list-workers`` and the commands steering remote edge workers.

They write the workers' rows in the database (``EDGE_KOMBU_DB_URL``, else Airflow's
``[database] sql_alchemy_conn``) through the same :class:`~edge_kombu.server.workers.
WorkerRegistry` methods as ``edge-kombu worker ...`` and the Worker hosts page, recorded
in the audit log with the OS user as actor; a worker follows at its next heartbeat.
A worker is named by its full name or by the name given to ``-H``/``-n`` when it started
(``site-1`` for ``celery@site-1``). A failure prints one line and exits 1.
"""

from __future__ import annotations

import getpass
import sys
from argparse import Namespace

from edge_kombu import errors
from edge_kombu.cli import _actor, _registry, _split


def _fail(message: str) -> None:
    print(f"Error: {message}", file=sys.stderr)
    sys.exit(1)


def _act(method: str, args: Namespace, *params, **kwargs):
    """Call the registry's ``method`` on the worker ``args.edge_hostname``; its answer."""
    registry = _registry(None)
    try:
        name = registry.find(args.edge_hostname)
        return name, getattr(registry, method)(name, *params, actor=_actor(None), **kwargs)
    except errors.EdgeError as exc:
        _fail(exc.message)


def _queues(text: str) -> list[str]:
    queues = _split((text,))
    if not queues:
        _fail("give at least one queue (-q Q1,Q2)")
    return [q.strip() for q in queues]


def list_workers(args: Namespace) -> None:
    """Print the workers as ``--output`` (table, json, yaml, plain)."""
    from airflow.cli.simple_table import AirflowConsole

    from edge_kombu.protocol import WORKER_STATES

    unknown = sorted(set(args.state or ()) - set(WORKER_STATES))
    if unknown:
        _fail(f"unknown state(s) {', '.join(unknown)}; states are: {', '.join(WORKER_STATES)}")
    workers = _registry(None).list(states=args.state or (), pattern=args.worker_name_pattern,
                                   queues=_split((args.queues,)) if args.queues else ())
    rows = [{
        "worker_name": w["name"],
        "state": w["state"],
        "queues": ",".join(w["desired_queues"] or w["queues"]),
        "jobs_active": len(w["running"]),
        "concurrency": w["slots_total"],
        "free_concurrency": max(w["slots_total"] - w["slots_used"], 0),
        "maintenance_comment": w["maintenance_comment"] or "",
        "team_name": (w["sysinfo"] or {}).get("team_name") or "",
        "last_heartbeat_age": w["heartbeat_age"],
    } for w in workers]
    AirflowConsole().print_as(data=rows, output=args.output)


def request_maintenance(args: Namespace) -> None:
    name, row = _act("request_maintenance", args, True, args.comments)
    print(f"{name}: {row['state']} (by {getpass.getuser()})")


def exit_maintenance(args: Namespace) -> None:
    name, row = _act("request_maintenance", args, False)
    print(f"{name}: {row['state']}")


def update_maintenance_comment(args: Namespace) -> None:
    name, row = _act("update_maintenance_comment", args, args.comments)
    print(f"{name}: {row['state']}: {row['maintenance_comment']}")


def remove_worker(args: Namespace) -> None:
    name, _ = _act("remove", args)
    print(f"removed {name}")


def shutdown_worker(args: Namespace) -> None:
    name, row = _act("request_shutdown", args)
    print(f"{name}: {row['state']}")


def shutdown_all_workers(args: Namespace) -> None:
    if not args.yes:
        answer = input("Shut down every edge worker after its running tasks? (y/n) ")
        if answer.strip().lower() not in ("y", "yes"):
            _fail("cancelled")
    names = _registry(None).request_shutdown_all(actor=_actor(None))
    print(f"asked {len(names)} worker(s) to shut down" + (f": {', '.join(names)}" if names
                                                          else ""))


def add_worker_queues(args: Namespace) -> None:
    name, row = _act("change_queues", args, _queues(args.queues), ())
    print(f"{name}: queues {','.join(row['desired_queues'])}")


def remove_worker_queues(args: Namespace) -> None:
    name, row = _act("change_queues", args, (), _queues(args.queues))
    print(f"{name}: queues {','.join(row['desired_queues'])}")


def set_worker_concurrency(args: Namespace) -> None:
    name, _ = _act("set_concurrency", args, args.concurrency)
    print(f"{name}: concurrency {args.concurrency}")
