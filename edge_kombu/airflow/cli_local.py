"""``airflow edge worker | status | maintenance | stop``: this host's edge workers.

``worker`` becomes ``celery -A edge_kombu worker`` with the options translated (the
process execs Celery, so it is exactly that worker, with Celery's signals and exit
codes); the others run ``celery -A edge_kombu edge ...`` (:mod:`edge_kombu.worker.cli`),
which talks to the worker's control socket and works while the edge API is unreachable.
"""

from __future__ import annotations

import os
import sys
from argparse import Namespace

from edge_kombu.worker.settings import ENV_TEAM_NAME

#: The name Airflow's daemon helpers give the files of ``--daemon``
#: (``$AIRFLOW_HOME/airflow-edge-worker.pid``, ``.out``, ``.err``, ``.log``).
PROCESS_NAME = "edge-worker"
DEFAULT_CONCURRENCY = 8


def celery_worker_argv(args: Namespace, conf, *, pidfile: str | None = None,
                       logfile: str | None = None) -> list[str]:
    """The ``celery worker`` command line of ``airflow edge worker ARGS``."""
    concurrency = args.concurrency or conf.getint("edge", "worker_concurrency",
                                                  fallback=DEFAULT_CONCURRENCY)
    argv = [sys.executable, "-m", "celery", "-A", "edge_kombu", "worker",
            "-c", str(concurrency), "-l", "DEBUG" if args.verbose else "INFO"]
    if args.queues:
        argv += ["-Q", ",".join(q.strip() for q in args.queues.split(",") if q.strip())]
    if args.edge_hostname:
        argv += ["-n", args.edge_hostname]
    if pidfile:
        argv += ["--pidfile", pidfile]
    if logfile:
        argv += ["--logfile", logfile]
    return argv


def worker(args: Namespace) -> None:
    """Replace this process with the Celery worker (in the background with ``--daemon``)."""
    from airflow.configuration import conf

    if args.team_name:
        os.environ[ENV_TEAM_NAME] = args.team_name
    if not args.daemon:
        argv = celery_worker_argv(args, conf, pidfile=args.pid and os.path.abspath(args.pid),
                                  logfile=args.log_file)
        os.execv(argv[0], argv)
    _daemon(args, conf)


def _daemon(args: Namespace, conf) -> None:
    """Detach (Airflow's daemon files and umask), then exec the worker, which writes and
    removes the pid file itself (Celery's ``--pidfile``)."""
    import daemon
    from airflow import settings
    from airflow.utils.cli import setup_locations
    from airflow.utils.process_utils import check_if_pidfile_process_is_running

    pidfile, stdout, stderr, logfile = setup_locations(
        PROCESS_NAME, pid=args.pid, stdout=args.stdout, stderr=args.stderr, log=args.log_file)
    check_if_pidfile_process_is_running(pid_file=pidfile, process_name=PROCESS_NAME)
    umask = args.umask or conf.get("edge", "worker_umask", fallback=None) or settings.DAEMON_UMASK
    argv = celery_worker_argv(args, conf, pidfile=os.path.abspath(pidfile),
                              logfile=os.path.abspath(logfile))
    with open(stdout, "a") as out, open(stderr, "a") as err:
        out.truncate(0)
        err.truncate(0)
        with daemon.DaemonContext(stdout=out, stderr=err, umask=int(umask, 8),
                                  working_directory=os.getcwd()):
            os.execv(argv[0], argv)


def _celery_edge(*argv: str) -> None:
    """Run ``celery -A edge_kombu edge ARGV`` here; exits (1 with a message on failure)."""
    from edge_kombu.worker.cli import edge

    edge.main(args=list(argv), prog_name="airflow edge", standalone_mode=True)


def _which(args: Namespace) -> list[str]:
    picked = []
    if args.pid:
        picked += ["--pidfile", args.pid]
    if args.edge_hostname:
        picked += ["--name", args.edge_hostname]
    return picked


def status(args: Namespace) -> None:
    _celery_edge("status", *_which(args))


def maintenance(args: Namespace) -> None:
    extra = ["--comments", args.comments] if args.comments else []
    _celery_edge("maintenance", args.maintenance, *extra, *(["--wait"] if args.wait else []),
                 *_which(args))


def stop(args: Namespace) -> None:
    _celery_edge("stop", *(["--wait"] if args.wait else []), *_which(args))
