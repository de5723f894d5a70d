"""Housekeeping: what expires and what is tidied up, on a schedule in each API process.

=====================  ===========  ====================================================
job                    every        does
=====================  ===========  ====================================================
silent workers         tick         ``unknown``, their sessions closed, leases redelivered
waiting sessions       lease / 8    the sessions whose consume waits here marked alive
expiry                 tick         silent sessions, TTL'd messages, idle queues, results
queue samples          1 min        each queue's depth, for the Queues page's charts
tasks too big          30 s         logs queues holding a task no live worker can fit
old jobs               1 h          jobs finished longer ago than the retention
old task logs          5 min        logs without a new chunk for their retention
=====================  ===========  ====================================================

The tick is ``reap_interval`` (1 s by default). Every job is idempotent, so several API
processes may run them side by side. :class:`IntervalScheduler` is the one loop that
runs jobs at their own intervals (the ready poller of :mod:`~edge_kombu.server.wakeup`
runs on one too).

Silence is held against workers and sessions only when
:class:`~edge_kombu.server.outages.Outages` allows it: not while this process cannot reach
its database, nor for ``EDGE_KOMBU_OUTAGE_GRACE`` after it got it back or started (the
jobs tell it when they fail to reach the database and when they reach it again).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from edge_kombu.server.broker import Broker
from edge_kombu.server.config import DEFAULT_JOB_RETENTION
from edge_kombu.server.jobs import JobHistory
from edge_kombu.server.logs import TaskLogs
from edge_kombu.server.outages import Outages
from edge_kombu.server.results import Results
from edge_kombu.server.sql import SQL
from edge_kombu.server.workers import WorkerRegistry

log = logging.getLogger(__name__)


@dataclass
class _Job:
    name: str
    interval: float
    run: Callable[[], object]
    next_at: float = 0.0


class IntervalScheduler(threading.Thread):
    """A daemon thread that runs named jobs, each at its own interval.

    It wakes every ``tick`` seconds and runs the jobs that are due, in the order they
    were added. A job that fails is logged and tried again at its next turn; the others
    still run (a background loop must survive database hiccups).
    """

    def __init__(self, name: str, *, tick: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name=name, daemon=True)
        self.tick = tick
        self.clock = clock
        self.stopped = threading.Event()
        self._jobs: list[_Job] = []

    def every(self, interval: float, name: str, job: Callable[[], object]) -> IntervalScheduler:
        """Run ``job`` every ``interval`` seconds (0: at every tick), first at the first tick."""
        self._jobs.append(_Job(name, interval, job))
        return self

    def run_due(self) -> list[str]:
        """Run the jobs that are due now; returns their names."""
        ran = []
        for job in self._jobs:
            now = self.clock()
            if now < job.next_at:
                continue
            job.next_at = now + job.interval
            ran.append(job.name)
            try:
                job.run()
            except Exception:  # noqa: BLE001 - logged; the job runs again at its next turn
                log.exception("%s: %s failed; trying again in %.1fs",
                              self.name, job.name, max(job.interval, self.tick))
        return ran

    def run(self) -> None:
        while not self.stopped.is_set():
            self.run_due()
            self.stopped.wait(self.tick)

    def stop(self) -> None:
        self.stopped.set()


class Housekeeping:
    """The expiry of every service's data and the reaper thread that runs it all.

    ``broker`` and ``results`` are expired; the jobs of ``workers``, ``jobs`` and ``logs``
    are scheduled only for the services given. ``outages`` says when silent workers and
    sessions may be expired (default: whenever the database is reached, no grace).
    """

    #: Seconds between samples of the queues' depth (the queue page's charts).
    SAMPLE_INTERVAL = 60.0
    #: Seconds between checks for tasks too big for every worker of their queue.
    TOO_BIG_INTERVAL = 30.0
    #: Seconds between deletions of old jobs from the jobs history.
    JOB_PURGE_INTERVAL = 3600.0
    #: Seconds between two purges of old task logs.
    LOG_PURGE_INTERVAL = 300.0

    def __init__(self, sql: SQL, *, broker: Broker, results: Results,
                 workers: WorkerRegistry | None = None, jobs: JobHistory | None = None,
                 logs: TaskLogs | None = None,
                 job_retention: float = DEFAULT_JOB_RETENTION,
                 outages: Outages | None = None,
                 on_expired: Callable[[dict[str, int]], None] | None = None) -> None:
        self.sql = sql
        self.outages = outages if outages is not None else Outages(0.0, clock=sql.clock)
        self.broker = broker
        self.results = results
        self.workers = workers
        self.jobs = jobs
        self.logs = logs
        self.job_retention = job_retention
        self.on_expired = on_expired  # e.g. the metrics of expired sessions and leases

    def expire_silent_workers(self) -> list[str]:
        """Mark workers silent for the worker timeout unknown, unless an outage excuses them."""
        if not self.outages.may_expire():
            return []
        with self.outages.reaching():
            return self.workers.expire_silent()

    def expire(self) -> dict[str, int]:
        """Expire silent sessions (releasing their leases; not during or right after an
        outage), TTL'd messages, idle queues and results, in one transaction; returns how
        many of each."""
        now = self.sql.clock()
        expired = self.broker.expired
        try:
            with self.outages.reaching(), self.sql.transaction() as tx:
                counts = self.broker.expire(tx, now, silent_sessions=self.outages.may_expire(now))
                counts["results_expired"] = self.results.delete_expired(tx.conn, now)
        except BaseException:
            if hasattr(expired, "forget"):
                expired.forget()
            raise
        if hasattr(expired, "announce"):  # task-revoked events for the monitors
            expired.announce(self.broker.publish)
        if self.on_expired is not None:
            self.on_expired(counts)
        return counts

    def sample_queues(self) -> None:
        self.jobs.sample_queues(self.broker.queue_overview())

    def purge_jobs(self) -> int:
        purged = self.jobs.purge(self.job_retention)
        if self.broker.grants is not None:  # the task grants live as long as the jobs
            with self.sql.transaction() as tx:
                self.broker.grants.purge(tx.conn, self.sql.clock() - self.job_retention)
        return purged

    def purge_logs(self) -> int:
        purged = self.logs.purge()
        if purged:
            log.info("purged %d task logs older than their retention", purged)
        return purged

    def reaper(self, tick: float) -> IntervalScheduler:
        """The thread that runs the housekeeping jobs, waking every ``tick`` seconds."""
        reaper = IntervalScheduler("edge-kombu-reaper", tick=tick)
        watch = self.outages.watch  # jobs that always use the database tell it if they could
        if self.workers is not None:
            reaper.every(0, "silent workers", self.expire_silent_workers)
        # Not watched: it reads the database only when a waiting session is due.
        reaper.every(self.broker.lease_timeout / 8, "waiting sessions",
                     self.broker.keep_waiting_alive)
        reaper.every(0, "expiry", self.expire)
        if self.jobs is not None:
            reaper.every(self.SAMPLE_INTERVAL, "queue samples", watch(self.sample_queues))
            reaper.every(self.JOB_PURGE_INTERVAL, "old jobs", watch(self.purge_jobs))
        if self.workers is not None:
            reaper.every(self.TOO_BIG_INTERVAL, "tasks too big",
                         watch(self.workers.report_too_big))
        if self.logs is not None:
            reaper.every(self.LOG_PURGE_INTERVAL, "old task logs", watch(self.purge_logs))
        return reaper
