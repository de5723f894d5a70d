"""Edge workers on the server: registration, heartbeats, admin requests, liveness.

A worker reports its own state (``starting``, ``idle``, ``running``, ``maintenance
pending``, ``maintenance mode``, ``terminating``) with every heartbeat. Admins ask
for maintenance, a shutdown, other queues or another slot budget by writing the
worker's row (``edge-kombu worker …``, the web UI); the worker learns it from the
answer to its next heartbeat. Until the worker acknowledges a request, the row
shows it as ``maintenance request``, ``maintenance exit`` or ``shutdown request``,
as Airflow's edge executor does.

Maintenance is a desired state with a time stamp: the side that changed it last
wins, whether that is an admin here or the worker's local command while the API
was unreachable. It survives a restart of the worker.

A plain ``celery worker`` (an app that does not install edge_kombu's worker) sends
no heartbeats: it is registered from its consumer session (:meth:`WorkerRegistry.observe_session`),
its node name from the transport or its mailbox queue, and is alive while its session
is. Its row is marked ``kind: celery``; the edge-only requests (maintenance, queues, slot
budget, shutdown) are refused for it, Celery's own remote control does those.

A worker silent for ``worker_timeout`` becomes ``unknown`` (``offline maintenance``
if it was in maintenance) and its consumer session is closed, so its leased
messages are redelivered at once.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Iterable

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from edge_kombu import errors
from edge_kombu.protocol import (
    MAX_NAME_LENGTH,
    MAX_SLOTS,
    VERSION,
    WORKER_IDLE,
    WORKER_MAINTENANCE_EXIT,
    WORKER_MAINTENANCE_MODE,
    WORKER_MAINTENANCE_PENDING,
    WORKER_MAINTENANCE_REQUEST,
    WORKER_OFFLINE,
    WORKER_OFFLINE_MAINTENANCE,
    WORKER_RUNNING,
    WORKER_SHUTDOWN_REQUEST,
    WORKER_TERMINATING,
    WORKER_UNKNOWN,
    versions_differ,
)
from edge_kombu.server import models as m
from edge_kombu.server.audit import Actor, AuditLog
from edge_kombu.server.broker import Broker
from edge_kombu.server.config import DEFAULT_WORKER_TIMEOUT
from edge_kombu.server.jobs import JobHistory
from edge_kombu.server.sql import SQL
from edge_kombu.teams import team_queue

log = logging.getLogger(__name__)

#: States of a worker that is not running (no heartbeats expected).
GONE = (WORKER_OFFLINE, WORKER_OFFLINE_MAINTENANCE, WORKER_UNKNOWN)
_IN_MAINTENANCE = (WORKER_MAINTENANCE_PENDING, WORKER_MAINTENANCE_MODE)
_STOPPING = (WORKER_TERMINATING, WORKER_OFFLINE)
#: ``instance`` of a plain Celery worker's row: this, then its consumer session.
PLAIN_INSTANCE = "celery:"
#: Celery's remote-control mailbox of a node: ``<node name>.celery.pidbox``.
_PIDBOX_SUFFIX = ".celery.pidbox"


def is_plain(instance: str | None) -> bool:
    return bool(instance) and instance.startswith(PLAIN_INSTANCE)


def _celery_internal(queue: str) -> bool:
    """Celery's own queues (mailboxes, replies, event receivers), not task queues."""
    return queue.endswith(_PIDBOX_SUFFIX) or queue.startswith("celeryev.")


def reported_team(sysinfo: object) -> str | None:
    """The Airflow team a worker reported in its heartbeats' system info, if any."""
    team = sysinfo.get("team_name") if isinstance(sysinfo, dict) else None
    return team if isinstance(team, str) and team else None


def _serves_any(worker: dict, queues: set[str]) -> bool:
    """Whether ``worker`` consumes (or is asked to) one of ``queues``; a team's worker
    also by the plain names of its team's queues (``remote`` for ``team_a:remote``)."""
    team = reported_team(worker["sysinfo"])
    mine = set(worker["desired_queues"] or worker["queues"])
    return any(q in mine or (team and team_queue(team, q) in mine) for q in queues)


def pidbox_node(queues) -> str | None:
    """The node name of the one worker mailbox among ``queues`` (not a reply queue)."""
    nodes = {q[:-len(_PIDBOX_SUFFIX)] for q in queues
             if q.endswith(_PIDBOX_SUFFIX) and not q.endswith(".reply" + _PIDBOX_SUFFIX)}
    return nodes.pop() if len(nodes) == 1 else None


def displayed_state(reported: str, *, maintenance: bool, shutdown: bool) -> str:
    """Merge what the worker says with what was asked of it."""
    if shutdown and reported not in _STOPPING:
        return WORKER_SHUTDOWN_REQUEST
    if maintenance and reported not in _IN_MAINTENANCE and reported not in _STOPPING:
        return WORKER_MAINTENANCE_REQUEST
    if not maintenance and reported in _IN_MAINTENANCE:
        return WORKER_MAINTENANCE_EXIT
    return reported


def _loads(text: str | None, default):
    return default if text is None else json.loads(text)


class WorkerRegistry:
    """Worker rows, each method one transaction of ``sql``.

    ``broker`` closes a silent worker's consumer session and tells which queues hold what;
    ``jobs``, if given, hears which tasks each heartbeat lists as running; ``audit`` (by
    default one on ``sql``) records every admin request with its actor, in its transaction.
    """

    def __init__(self, sql: SQL, *, broker: Broker, jobs: JobHistory | None = None,
                 audit: AuditLog | None = None,
                 worker_timeout: float = DEFAULT_WORKER_TIMEOUT) -> None:
        self._reported: tuple = ()
        self.sql = sql
        self.audit = audit if audit is not None else AuditLog(sql)
        self.broker = broker
        self.jobs = jobs
        self.worker_timeout = worker_timeout
        self.clock = sql.clock
        broker.session_observers.append(self.observe_session)

    # -- the worker's side ----------------------------------------------------------------

    def heartbeat(self, beat: dict, *, grantee: str | None = None) -> dict:
        """Record one heartbeat (the first registers the worker); return the admins' wishes.

        ``grantee``: the worker credential sending it, whose delivered tasks alone it may
        mark running in the jobs history."""
        now = self.clock()
        name, instance, reported = beat["name"], beat["instance"], beat["state"]
        with self.sql.transaction() as tx:
            conn = tx.conn
            row = conn.execute(
                self.sql.lock_rows(select(m.worker).where(m.worker.c.name == name))
            ).mappings().first()
            if row is not None and row["instance"] != instance and self._alive(row, now) \
                    and not is_plain(row["instance"]):  # its richer registration replaces it
                raise errors.Conflict(
                    f"worker {name!r} is already online (another process, last heartbeat "
                    f"{now - row['last_heartbeat']:.0f}s ago); give this one another name (-n)"
                )
            maintenance, comment, changed_at = self._merge_maintenance(row, beat)
            shutdown = bool(row and row["shutdown_requested"] and row["instance"] == instance)
            desired_queues = _loads(row["desired_queues"], None) if row else None
            concurrency = row["desired_concurrency"] if row else None
            version = (beat.get("versions") or {}).get("edge_kombu") or ""
            warning = versions_differ(VERSION, version) if version else None
            values = {
                "instance": instance,
                "state": displayed_state(reported, maintenance=maintenance, shutdown=shutdown),
                "queues": json.dumps(beat["queues"]),
                "slots_total": beat["slots_total"],
                "slots_used": beat.get("slots_used", 0),
                "running": json.dumps(beat.get("running") or []),
                "sysinfo": json.dumps(beat.get("sysinfo") or {}),
                "versions": json.dumps(beat.get("versions") or {}),
                "version_warning": warning,
                "session": beat.get("session"),
                "last_heartbeat": now,
                "maintenance": maintenance,
                "maintenance_comment": comment,
                "maintenance_changed_at": changed_at,
                "shutdown_requested": shutdown,
            }
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            m.worker.insert().values(name=name, first_online=now, **values)
                        )
                except IntegrityError:
                    raise errors.Conflict(
                        f"worker {name!r} registered twice at once; give each worker its own name"
                    ) from None
            else:
                if row["instance"] != instance:
                    values["first_online"] = now
                conn.execute(update(m.worker).where(m.worker.c.name == name).values(**values))
            if row is not None and changed_at != row["maintenance_changed_at"] \
                    and maintenance != bool(row["maintenance"]):
                # The worker's own `celery edge maintenance` won over the admins' setting.
                self.audit.record(Actor(name, "worker"),
                                  "maintenance on" if maintenance else "maintenance off", name,
                                  detail="on the worker host", comment=comment, conn=conn)
            if self.jobs is not None:
                self.jobs.running(conn, name, beat.get("running") or [], now, grantee=grantee)
        return {
            "state": values["state"],
            "maintenance": maintenance,
            "maintenance_comment": comment,
            "shutdown": shutdown,
            "queues": desired_queues if desired_queues is not None else beat["queues"],
            "concurrency": concurrency,
            "version_warning": warning,
        }

    def observe_session(self, conn, session: str, principal: str, queues, node: dict | None,
                        now: float) -> None:
        """Register or refresh the plain Celery worker consuming in ``session`` (in the
        broker's transaction). A worker that registers by heartbeats keeps its own row."""
        node = node or {}
        name = node.get("name") or pidbox_node(queues)
        if not name:
            return  # not a Celery worker: a publisher, a monitor, a plain kombu consumer
        row = conn.execute(
            select(m.worker.c.instance, m.worker.c.state, m.worker.c.last_heartbeat,
                   m.worker.c.session)
            .where(m.worker.c.name == name)
        ).mappings().first()
        if row is not None and not is_plain(row["instance"]) \
                and (self._alive(row, now) or row["session"] == session):
            return  # an edge worker's (even gone: its last consumes after deregistering)
        instance = PLAIN_INSTANCE + session
        versions = node.get("versions") or {}
        version = versions.get("edge_kombu") or ""
        values = {
            "instance": instance,
            "queues": json.dumps(sorted(q for q in queues if not _celery_internal(q))),
            "slots_total": node.get("concurrency") or 1,
            "sysinfo": json.dumps({"pool": node["pool"]} if node.get("pool") else {}),
            "versions": json.dumps(versions),
            "version_warning": versions_differ(VERSION, version) if version else None,
            "session": session,
            "last_heartbeat": now,
        }
        if row is None:
            try:
                with conn.begin_nested():
                    conn.execute(m.worker.insert().values(
                        name=name, first_online=now, state=WORKER_IDLE, slots_used=0,
                        running="[]", maintenance=False, shutdown_requested=False, **values))
            except IntegrityError:
                pass  # registered at the same moment by another request of the same worker
            return
        if row["instance"] != instance or row["state"] in GONE:
            values.update(first_online=now, state=WORKER_IDLE, slots_used=0, running="[]")
        conn.execute(update(m.worker).where(m.worker.c.name == name).values(**values))

    def _sync_plain(self, conn) -> None:
        """Plain Celery workers live as long as their consumer sessions: the session's
        last sign of life is the worker's; a closed session is a worker gone offline."""
        plain = (m.worker.c.instance.like(PLAIN_INSTANCE + "%"), m.worker.c.state.not_in(GONE))
        live = select(m.session.c.last_seen).where(
            m.session.c.id == m.worker.c.session, m.session.c.closed_at.is_(None)
        ).scalar_subquery()
        conn.execute(update(m.worker).where(*plain).values(
            last_heartbeat=func.coalesce(live, m.worker.c.last_heartbeat)))
        closed = select(m.session.c.id).where(m.session.c.closed_at.is_not(None))
        conn.execute(update(m.worker).where(*plain, m.worker.c.session.in_(closed))
                     .values(state=WORKER_OFFLINE, slots_used=0, running="[]"))

    def _alive(self, row, now: float) -> bool:
        return row["state"] not in GONE and now - row["last_heartbeat"] < self.worker_timeout

    @staticmethod
    def _merge_maintenance(row, beat: dict) -> tuple[bool, str | None, float | None]:
        """The newer of the admins' and the worker's own maintenance setting."""
        local_at = beat.get("maintenance_changed_at")
        if row is None or (
            local_at is not None
            and (row["maintenance_changed_at"] is None or local_at > row["maintenance_changed_at"])
        ):
            return bool(beat.get("maintenance")), beat.get("maintenance_comment"), local_at
        return bool(row["maintenance"]), row["maintenance_comment"], row["maintenance_changed_at"]

    def deregister(self, name: str, instance: str) -> None:
        """A clean exit: offline, or offline maintenance (it comes back in maintenance)."""
        with self.sql.transaction() as tx:
            row = tx.conn.execute(
                select(m.worker.c.instance, m.worker.c.maintenance).where(m.worker.c.name == name)
            ).first()
            if row is None or row.instance != instance:
                return
            tx.conn.execute(
                update(m.worker)
                .where(m.worker.c.name == name)
                .values(
                    state=WORKER_OFFLINE_MAINTENANCE if row.maintenance else WORKER_OFFLINE,
                    slots_used=0,
                    running="[]",
                    shutdown_requested=False,
                )
            )

    # -- liveness -------------------------------------------------------------------------

    def expire_silent(self) -> list[str]:
        """Mark workers without a heartbeat for ``worker_timeout`` unknown; free their leases."""
        now = self.clock()
        is_silent = (
            m.worker.c.state.not_in(GONE),
            m.worker.c.last_heartbeat < now - self.worker_timeout,
        )
        with self.sql.transaction() as tx:
            conn = tx.conn
            self._sync_plain(conn)
            candidates = conn.execute(
                select(m.worker.c.name, m.worker.c.maintenance, m.worker.c.session)
                .where(*is_silent)
            ).all()
            # Check again while writing: a heartbeat may have committed since the select.
            silent = [
                (name, maintenance, session)
                for name, maintenance, session in candidates
                if conn.execute(
                    update(m.worker)
                    .where(m.worker.c.name == name, *is_silent)
                    .values(state=WORKER_OFFLINE_MAINTENANCE if maintenance else WORKER_UNKNOWN,
                            slots_used=0, running="[]")
                ).rowcount
            ]
            sessions = [session for _, _, session in silent if session]
            if sessions:
                self.broker.close_sessions(tx, sessions, now)
        for name, _, _ in silent:
            log.warning("worker %s missed its heartbeats for %.0fs: marked unknown, its "
                        "messages are redelivered", name, self.worker_timeout)
        return [name for name, _, _ in silent]

    # -- the admins' side -----------------------------------------------------------------

    def list(self, *, states: Iterable[str] = (), pattern: str | None = None,
             queues: Iterable[str] = ()) -> list[dict]:
        """The workers, by name; only those in ``states``, whose name matches the glob
        ``pattern``, or serving any of ``queues`` (asked for, else reported), if given."""
        stmt = select(m.worker).order_by(m.worker.c.name)
        states = list(states)
        if states:
            stmt = stmt.where(m.worker.c.state.in_(states))
        with self.sql.connect() as conn:
            rows = conn.execute(stmt).mappings().all()
        now = self.clock()
        workers = [self._public(row, now) for row in rows]
        if pattern:
            workers = [w for w in workers if fnmatch.fnmatchcase(w["name"], pattern)]
        wanted = set(queues)
        if wanted:
            workers = [w for w in workers if _serves_any(w, wanted)]
        return workers

    def find(self, name: str) -> str:
        """The full name of the worker called ``name``: its Celery node name
        (``celery@site-1``), or the host part alone (``site-1``, what ``-n site-1`` and
        Airflow's ``airflow edge worker -H site-1`` name), or the part before ``@``, when
        one worker alone has it."""
        with self.sql.connect() as conn:
            names = conn.execute(select(m.worker.c.name)).scalars().all()
        if name in names:
            return name
        found = sorted(n for n in names if "@" in n and name in n.split("@", 1))
        if not found:
            raise errors.NotFound(f"no worker named {name!r}")
        if len(found) > 1:
            raise errors.Conflict(f"{name!r} names {len(found)} workers ({', '.join(found)}); "
                                  "give the full name")
        return found[0]

    def get(self, name: str) -> dict:
        with self.sql.connect() as conn:
            row = conn.execute(select(m.worker).where(m.worker.c.name == name)).mappings().first()
        if row is None:
            raise errors.NotFound(f"no worker named {name!r}")
        return self._public(row, self.clock())

    @staticmethod
    def _public(row, now: float) -> dict:
        queues = _loads(row["queues"], [])
        return {
            "name": row["name"],
            "kind": "celery" if is_plain(row["instance"]) else "edge",
            "state": row["state"],
            "queues": queues,
            "desired_queues": _loads(row["desired_queues"], None),
            "slots_total": row["slots_total"],
            "slots_used": row["slots_used"],
            "running": _loads(row["running"], []),
            "sysinfo": _loads(row["sysinfo"], {}),
            "versions": _loads(row["versions"], {}),
            "version_warning": row["version_warning"],
            "maintenance": bool(row["maintenance"]),
            "maintenance_comment": row["maintenance_comment"],
            "shutdown_requested": bool(row["shutdown_requested"]),
            "desired_concurrency": row["desired_concurrency"],
            "first_online": row["first_online"],
            "last_heartbeat": row["last_heartbeat"],
            "heartbeat_age": round(now - row["last_heartbeat"], 1),
        }

    def _change(self, name: str, values: dict, *, action: str, actor: Actor | None,
                comment: str | None = None, detail=None) -> dict:
        """Write ``values`` to the worker's row and the audit entry, in one transaction.

        ``values["desired_queues"]`` and ``detail`` may be functions of the locked row.
        """
        with self.sql.transaction() as tx:
            row = tx.conn.execute(
                self.sql.lock_rows(select(m.worker).where(m.worker.c.name == name))
            ).mappings().first()
            if row is None:
                raise errors.NotFound(f"no worker named {name!r}")
            if is_plain(row["instance"]):
                raise errors.Conflict(
                    f"{name!r} is a plain Celery worker (no edge_kombu worker runs in it): use "
                    f"Celery's remote control, e.g. celery -A <app> control shutdown -d {name} "
                    "(or add_consumer, cancel_consumer, pool_grow, pool_shrink)")
            if callable(values.get("desired_queues")):
                values["desired_queues"] = values["desired_queues"](row)
            if "maintenance" in values:
                values["state"] = _state_after_request(row, values["maintenance"])
            tx.conn.execute(update(m.worker).where(m.worker.c.name == name).values(**values))
            self.audit.record(actor, action, name, comment=comment, conn=tx.conn,
                              detail=detail(row, values) if callable(detail) else detail)
        return self.get(name)

    def request_maintenance(self, name: str, on: bool, comment: str | None = None, *,
                            actor: Actor | None = None) -> dict:
        values = {"maintenance": on, "maintenance_changed_at": self.clock()}
        if on:
            if not comment:
                raise errors.InvalidRequest("maintenance on needs a comment (--comments)")
            values["maintenance_comment"] = comment[:1024]
        else:
            values["maintenance_comment"] = None
        return self._change(name, values, action="maintenance on" if on else "maintenance off",
                            actor=actor, comment=comment)

    def update_maintenance_comment(self, name: str, comment: str, *,
                                   actor: Actor | None = None) -> dict:
        """Replace the comment of a worker in maintenance, leaving it in maintenance (the
        worker hears of it with its next heartbeat)."""
        if not comment:
            raise errors.InvalidRequest("give the new maintenance comment (--comments)")
        worker = self.get(name)
        if not worker["maintenance"]:
            raise errors.Conflict(f"worker {name!r} is not in maintenance ({worker['state']}); "
                                  "only a maintenance comment can be changed")
        return self._change(name, {"maintenance_comment": comment[:1024],
                                   "maintenance_changed_at": self.clock()},
                            action="maintenance comment", actor=actor, comment=comment)

    def request_shutdown_all(self, *, actor: Actor | None = None,
                             comment: str | None = None) -> list[str]:
        """Ask every worker that is not offline or unknown to shut down; the names asked."""
        asked = []
        for worker in self.list():
            if worker["state"] in GONE or worker["shutdown_requested"]:
                continue
            try:
                self.request_shutdown(worker["name"], actor=actor, comment=comment)
            except (errors.NotFound, errors.Conflict):
                continue  # removed or gone since the listing
            asked.append(worker["name"])
        return asked

    def request_shutdown(self, name: str, *, actor: Actor | None = None,
                         comment: str | None = None) -> dict:
        worker = self.get(name)
        if worker["state"] in GONE:
            raise errors.Conflict(f"worker {name!r} is {worker['state']}; nothing to shut down")
        return self._change(name, {"shutdown_requested": True, "state": WORKER_SHUTDOWN_REQUEST},
                            action="shutdown", actor=actor, comment=comment)

    def change_queues(self, name: str, add: Iterable[str] = (), remove: Iterable[str] = (), *,
                      actor: Actor | None = None, comment: str | None = None) -> dict:
        add, remove = list(add), set(remove)
        for queue in add:
            if not queue or len(queue) > MAX_NAME_LENGTH or "\x00" in queue:
                raise errors.InvalidRequest(f"queue names must be 1 to {MAX_NAME_LENGTH} "
                                            f"characters without NUL: {queue[:300]!r}")

        def merged(row) -> str:
            current = _loads(row["desired_queues"], None) or _loads(row["queues"], [])
            # A team's worker consumes only its team's queues: names given plain mean those.
            team = reported_team(_loads(row["sysinfo"], {}))
            adding = [team_queue(team, q) for q in add]
            removing = {team_queue(team, q) for q in remove} | remove
            queues = ([q for q in current if q not in removing]
                      + [q for q in adding if q not in current])
            if not queues:
                raise errors.InvalidRequest("a worker must keep at least one queue")
            return json.dumps(queues)

        def detail(_row, values) -> str:
            parts = [f"{verb} {','.join(sorted(names))}"
                     for verb, names in (("add", set(add)), ("remove", remove)) if names]
            return f"{'; '.join(parts)}; now {','.join(json.loads(values['desired_queues']))}"

        return self._change(name, {"desired_queues": merged}, action="queues", actor=actor,
                            comment=comment, detail=detail)

    def set_concurrency(self, name: str, concurrency: int, *, actor: Actor | None = None,
                        comment: str | None = None) -> dict:
        if not 1 <= concurrency <= MAX_SLOTS:
            raise errors.InvalidRequest(f"concurrency must be >= 1 and <= {MAX_SLOTS}")

        def detail(row, _values) -> str:
            return f"{row['desired_concurrency'] or row['slots_total']} -> {concurrency} slots"

        return self._change(name, {"desired_concurrency": concurrency}, action="concurrency",
                            actor=actor, comment=comment, detail=detail)

    def remove(self, name: str, *, actor: Actor | None = None, comment: str | None = None) -> None:
        worker = self.get(name)
        if worker["state"] not in GONE:
            raise errors.Conflict(
                f"worker {name!r} is {worker['state']}; only offline or unknown workers can be "
                "removed (shut it down first)"
            )
        with self.sql.transaction() as tx:
            if tx.conn.execute(delete(m.worker).where(m.worker.c.name == name)).rowcount:
                self.audit.record(actor, "remove", name, detail=f"was {worker['state']}",
                                  comment=comment, conn=tx.conn)

    def report_too_big(self) -> list[dict]:
        """Log (once per change) the queues whose tasks no consuming worker can fit."""
        found = too_big(self.broker.queue_overview(), self.max_slots_by_queue())
        key = tuple(sorted((f["queue"], f["slots"], f["largest_worker"]) for f in found))
        if key != self._reported:
            for f in found:
                log.warning("queue %r holds a task needing %d slots, but its largest live worker "
                            "has %d: it will not run until a bigger worker serves the queue",
                            f["queue"], f["slots"], f["largest_worker"])
            self._reported = key
        return found

    def max_slots_by_queue(self) -> dict[str, int]:
        """For each queue, the largest slot budget among live workers consuming it."""
        return _largest_slots(self._serving())

    def queue_report(self) -> list[dict]:
        """The broker's queue overview with who serves each queue (the Queues page and
        ``edge-kombu queues``): ``workers`` (live ones consuming it), ``largest_worker_slots``
        (None if none), ``too_big`` (a ready task needs more slots than any of them has) and
        ``unserved`` (tasks wait, and neither a live worker nor any consumer takes them)."""
        overview = self.broker.queue_overview()
        serving = self._serving()
        capacity = _largest_slots(serving)
        problems = {p["queue"] for p in too_big(overview, capacity)}
        report = []
        for q in overview:
            workers = [w["name"] for w in serving.get(q["name"], [])]
            report.append(dict(
                q, workers=workers, largest_worker_slots=capacity.get(q["name"]),
                too_big=q["name"] in problems,
                unserved=q["ready"] > 0 and not workers and not q["consumers"],
            ))
        return report

    def _serving(self) -> dict[str, list[dict]]:
        """The live workers consuming each queue (asked for, else reported), by queue."""
        serving: dict[str, list[dict]] = {}
        for worker in self.list():
            if worker["state"] in GONE:
                continue
            for queue in worker["desired_queues"] or worker["queues"]:
                serving.setdefault(queue, []).append(worker)
        return serving


def _largest_slots(serving: dict[str, list[dict]]) -> dict[str, int]:
    return {queue: max(w["slots_total"] for w in workers) for queue, workers in serving.items()}


def too_big(queues: list[dict], capacity: dict[str, int]) -> list[dict]:
    """Queues holding a task bigger than every live worker consuming the queue can run."""
    return [
        {"queue": q["name"], "slots": q["max_slots"], "largest_worker": capacity.get(q["name"], 0)}
        for q in queues
        if q["max_slots"] and q["ready"] and q["max_slots"] > capacity.get(q["name"], 0)
        and capacity.get(q["name"])  # a queue nobody consumes is a different problem
    ]


def _state_after_request(row, maintenance: bool) -> str:
    """The row's state right after an admin switched maintenance, before any heartbeat."""
    state = row["state"]
    if state in GONE:
        if state == WORKER_UNKNOWN:
            return state
        return WORKER_OFFLINE_MAINTENANCE if maintenance else WORKER_OFFLINE
    # Behind a pending request, guess what the worker itself last was.
    if state == WORKER_MAINTENANCE_EXIT:
        state = WORKER_MAINTENANCE_MODE
    elif state in (WORKER_MAINTENANCE_REQUEST, WORKER_SHUTDOWN_REQUEST):
        state = WORKER_RUNNING if row["slots_used"] else WORKER_IDLE
    return displayed_state(state, maintenance=maintenance, shutdown=bool(row["shutdown_requested"]))
