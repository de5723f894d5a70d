"""The ``airflow edge`` command group: the names and options of Airflow's edge provider.

Airflow builds its command line from :func:`edge_commands` on every ``airflow`` call
(through the provider's ``cli`` hook), so this module only declares: the commands load
their code when run.

Local commands act on the edge workers of this host (:mod:`.cli_local`)::

    airflow edge worker [-q Q1,Q2] [-c N] [-H NAME] [--team-name T] [-D ...]
    airflow edge status | maintenance on|off [-c COMMENTS] [-w] | stop [-w]

Central commands act on the workers' rows in the database (:mod:`.cli_admin`), as
``edge-kombu workers`` / ``edge-kombu worker ...`` and the Worker hosts page do; the
workers follow at their next heartbeat::

    airflow edge list-workers [-o table|json|yaml|plain] [-s STATE...] ...
    airflow edge remote-edge-worker-request-maintenance -H NAME -c COMMENTS   (and others)
"""

from __future__ import annotations

from airflow.cli.cli_config import (
    ARG_OUTPUT,
    ARG_PID,
    ARG_VERBOSE,
    ActionCommand,
    Arg,
    GroupCommand,
    lazy_load_command,
)

_LOCAL = "edge_kombu.airflow.cli_local"
_ADMIN = "edge_kombu.airflow.cli_admin"


def _positive_int(value: str) -> int:
    import argparse

    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value!r}")
    return number


# -- local worker ------------------------------------------------------------------------

ARG_CONCURRENCY = Arg(
    ("-c", "--concurrency"), type=_positive_int,
    help="Task slots the worker runs at once (its pool_slots budget); default: "
         "worker_concurrency of the edge section (8).",
)
ARG_QUEUES = Arg(
    ("-q", "--queues"),
    help="Comma-separated queues to consume; default: default_queue of the operators "
         "section.",
)
ARG_TEAM_NAME = Arg(
    ("-t", "--team-name"),
    help="Team of the worker (Airflow's multi-team mode): it consumes that team's queues only.",
)
ARG_EDGE_HOSTNAME = Arg(
    ("-H", "--edge-hostname"),
    help="Name of the worker (Celery's -n: NAME becomes celery@NAME, or give name@host); "
         "default: celery@<this host>.",
)
ARG_DAEMON = Arg(("-D", "--daemon"), action="store_true",
                 help="Run in the background (pid, stdout, stderr and log files in "
                      "AIRFLOW_HOME unless given).")
ARG_STDOUT = Arg(("--stdout",), help="With --daemon: file for the worker's stdout.")
ARG_STDERR = Arg(("--stderr",), help="With --daemon: file for the worker's stderr.")
ARG_LOG_FILE = Arg(("-l", "--log-file"), help="File the worker logs to (with --daemon: "
                                              "default AIRFLOW_HOME/airflow-edge-worker.log).")
ARG_UMASK = Arg(("-u", "--umask"), help="With --daemon: umask of the worker; default "
                                        "worker_umask of the edge section, else Airflow's "
                                        "daemon umask.")
ARG_WORKER = Arg(
    ("-H", "--edge-hostname"),
    help="The worker to act on when several run on this host (its name, or the part "
         "before or after @).",
)
ARG_MAINTENANCE = Arg(("maintenance",), choices=("on", "off"), help="Desired maintenance state.")
ARG_COMMENTS = Arg(("-c", "--comments"), help="Why (shown centrally with the worker).")
ARG_WAIT_MAINTENANCE = Arg(("-w", "--wait"), action="store_true",
                           help="With on: return once no task runs any more.")
ARG_WAIT_STOP = Arg(("-w", "--wait"), action="store_true",
                    help="Return once the worker process exited.")

# -- central -----------------------------------------------------------------------------

ARG_STATE = Arg(("-s", "--state"), nargs="+", help="Only workers in these states.")
ARG_NAME_PATTERN = Arg(("--worker-name-pattern",), metavar="PATTERN",
                       help="Only workers whose name matches this glob, e.g. 'site-*'.")
ARG_SERVING = Arg(("-q", "--queues"),
                  help="Only workers serving one of these comma-separated queues.")
ARG_HOST = Arg(
    ("-H", "--edge-hostname"), required=True,
    help="The worker: its full name (celery@site-1) or the name given to -H/-n (site-1).",
)
ARG_COMMENTS_REQUIRED = Arg(("-c", "--comments"), required=True,
                            help="Why (shown with the worker and in the audit log).")
ARG_QUEUES_CHANGE = Arg(("-q", "--queues"), required=True,
                        help="Comma-separated queues to add or remove.")
ARG_CONCURRENCY_REQUIRED = Arg(("-c", "--concurrency"), type=_positive_int, required=True,
                               help="The new slot budget (a positive integer).")
ARG_YES = Arg(("-y", "--yes"), action="store_true", default=False,
              help="Do not ask for confirmation.")


def _command(name: str, help: str, func: str, args: tuple) -> ActionCommand:
    return ActionCommand(name=name, help=help, func=lazy_load_command(func), args=args)


def edge_commands() -> list[GroupCommand]:
    local = [
        _command("worker", "Start an edge worker (celery -A edge_kombu worker).",
                 f"{_LOCAL}.worker",
                 (ARG_CONCURRENCY, ARG_QUEUES, ARG_TEAM_NAME, ARG_EDGE_HOSTNAME, ARG_PID,
                  ARG_VERBOSE, ARG_DAEMON, ARG_STDOUT, ARG_STDERR, ARG_LOG_FILE, ARG_UMASK)),
        _command("status", "Show the state of the local edge worker as JSON.",
                 f"{_LOCAL}.status", (ARG_PID, ARG_WORKER, ARG_VERBOSE)),
        _command("maintenance", "Switch maintenance of the local edge worker on or off.",
                 f"{_LOCAL}.maintenance",
                 (ARG_MAINTENANCE, ARG_COMMENTS, ARG_WAIT_MAINTENANCE, ARG_PID, ARG_WORKER,
                  ARG_VERBOSE)),
        _command("stop", "Stop the local edge worker after its running tasks.",
                 f"{_LOCAL}.stop", (ARG_WAIT_STOP, ARG_PID, ARG_WORKER, ARG_VERBOSE)),
    ]
    central = [
        _command("list-workers", "List the edge workers registered in the database.",
                 f"{_ADMIN}.list_workers",
                 (ARG_OUTPUT, ARG_STATE, ARG_NAME_PATTERN, ARG_SERVING)),
        _command("remote-edge-worker-request-maintenance", "Put an edge worker in maintenance.",
                 f"{_ADMIN}.request_maintenance", (ARG_HOST, ARG_COMMENTS_REQUIRED)),
        _command("remote-edge-worker-exit-maintenance", "Take an edge worker out of "
                 "maintenance.", f"{_ADMIN}.exit_maintenance", (ARG_HOST,)),
        _command("remote-edge-worker-update-maintenance-comment",
                 "Change the maintenance comment of an edge worker in maintenance.",
                 f"{_ADMIN}.update_maintenance_comment", (ARG_HOST, ARG_COMMENTS_REQUIRED)),
        _command("remove-remote-edge-worker", "Remove an offline edge worker from the database.",
                 f"{_ADMIN}.remove_worker", (ARG_HOST,)),
        _command("shutdown-remote-edge-worker", "Ask an edge worker to finish its tasks and "
                 "exit.", f"{_ADMIN}.shutdown_worker", (ARG_HOST,)),
        _command("shutdown-all-workers", "Ask every edge worker to finish its tasks and exit.",
                 f"{_ADMIN}.shutdown_all_workers", (ARG_YES,)),
        _command("add-worker-queues", "Add queues to an edge worker.",
                 f"{_ADMIN}.add_worker_queues", (ARG_HOST, ARG_QUEUES_CHANGE)),
        _command("remove-worker-queues", "Remove queues from an edge worker.",
                 f"{_ADMIN}.remove_worker_queues", (ARG_HOST, ARG_QUEUES_CHANGE)),
        _command("set-worker-concurrency", "Set the slot budget of an edge worker.",
                 f"{_ADMIN}.set_worker_concurrency", (ARG_HOST, ARG_CONCURRENCY_REQUIRED)),
    ]
    return [GroupCommand(
        name="edge",
        help="edge-kombu edge workers: start, steer, list",
        description="Edge workers of edge-kombu (Celery over HTTPS). Local commands act on "
                    "this host's workers; the others on the central database.",
        subcommands=local + central,
    )]
