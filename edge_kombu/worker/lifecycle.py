"""An edge worker's lifecycle: heartbeats, maintenance, queues, slot budget, drain and exit.

:class:`EdgeWorker` holds what the worker should do (the *desired* queues,
maintenance, slot budget, whether it is stopping) and makes the Celery consumer
follow it. Wishes arrive from two sides: the answers to heartbeats (what the admins
asked centrally) and the local control socket (``celery edge ...``).

Threads
    The heartbeat thread builds and sends heartbeats and watches a drain; control
    requests come in on the socket's threads. Neither touches the consumer: every
    change of the task consumer or the pool runs on the consumer's own thread
    (``consumer.call_soon``, which nudges the transport so it runs within
    milliseconds: see :mod:`edge_kombu.worker.loop`).

Maintenance
    On: the task queues are cancelled (remote control stays), running tasks finish;
    the state is ``maintenance pending`` while any task is held, ``maintenance mode``
    once none is. Off: the queues are consumed again.

Stop
    The task queues are cancelled, held tasks finish, then Celery's warm shutdown
    runs (``state.should_stop = 0``, exit code 0). Past the drain timeout the tasks
    still held are terminated (SIGTERM, reported as revoked, as ``celery control
    revoke --terminate`` does), then the worker exits.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path

from celery.worker import state as worker_state

from edge_kombu import errors
from edge_kombu.protocol import (
    WORKER_IDLE,
    WORKER_MAINTENANCE_MODE,
    WORKER_MAINTENANCE_PENDING,
    WORKER_RUNNING,
    WORKER_STARTING,
    WORKER_TERMINATING,
    pool_slots,
)
from edge_kombu.teams import team_queue
from edge_kombu.transport.client import EdgeClient
from edge_kombu.transport.kombu import nudge_consumers
from edge_kombu.worker import sysinfo

log = logging.getLogger(__name__)

#: Seconds between two looks at the worker's state by the heartbeat thread: a state
#: change (a task ended, a drain finished) is reported within this time.
TICK = 0.2
#: Seconds a heartbeat or deregistration may take.
REQUEST_TIMEOUT = 10.0
#: Seconds a control request waits for the consumer to apply a maintenance change.
APPLY_TIMEOUT = 10.0


def _snapshot(items) -> tuple:
    """A copy of a set other threads change (retry if it changed while copied)."""
    for _ in range(5):
        try:
            return tuple(items)
        except RuntimeError:
            continue
    return ()


class EdgeWorker:
    """The edge side of one Celery worker process."""

    def __init__(self, *, name: str, queues: list[str], concurrency: int, client: EdgeClient,
                 interval: float, socket_path: Path | None = None,
                 team: str | None = None) -> None:
        self.name = name
        #: ``--team-name``: every task queue this worker is given is that team's.
        self.team = team
        self.instance = uuid.uuid4().hex
        self.client = client
        self.interval = interval
        self.socket_path = socket_path
        self.queues = list(queues)  # desired task queues
        self.concurrency = concurrency
        self.maintenance = False
        self.maintenance_comment: str | None = None
        self.maintenance_changed_at: float | None = None  # local changes only
        self.stopping = False
        self.stop_reason: str | None = None
        self.version_warning: str | None = None
        self.server_state: str | None = None
        self.api_reachable: bool | None = None
        self.api_error: str | None = None
        self.last_heartbeat: float | None = None
        self.consumer = None
        self.attached = False  # the consumer is connected and follows the desired state
        self.consuming: list[str] = []
        self.applied_maintenance = False
        self._pending_concurrency: int | None = None
        self._drain_deadline: float | None = None
        self._terminating = False
        self._exit_requested = False
        self._generation = 0  # bumped by local maintenance changes
        self._lock = threading.RLock()
        self._applied = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what the worker is doing ---------------------------------------------------------

    @staticmethod
    def busy() -> bool:
        """Any task held: running, waiting for slots in the pool, or about to start."""
        return bool(worker_state.reserved_requests)

    def reported_state(self) -> str:
        if self.consumer is None:
            return WORKER_STARTING
        if self.stopping:
            return WORKER_TERMINATING
        busy = self.busy()
        # While the consumer reconnects it consumes nothing, and it applies the desired
        # state before it consumes again: the local switch is already in force.
        if self.applied_maintenance if self.attached else self.maintenance:
            return WORKER_MAINTENANCE_PENDING if busy else WORKER_MAINTENANCE_MODE
        return WORKER_RUNNING if busy else WORKER_IDLE

    def running(self) -> list[dict]:
        return [
            {"id": req.id, "name": req.name, "slots": pool_slots(req.request_dict),
             "started": req.time_start}
            for req in _snapshot(worker_state.active_requests)
        ]

    def slots(self) -> tuple[int, int]:
        """``(total, used)`` slots."""
        pool = getattr(self.consumer, "pool", None)
        if pool is not None and hasattr(pool, "slots_total"):
            return pool.slots_total, pool.slots_used
        return self.concurrency, sum(task["slots"] for task in self.running())

    def status(self) -> dict:
        total, used = self.slots()
        return {
            "name": self.name,
            "instance": self.instance,
            "pid": os.getpid(),
            "state": self.reported_state(),
            "server_state": self.server_state,
            "queues": list(self.queues),
            "consuming": list(self.consuming),
            "slots_total": total,
            "slots_used": used,
            "slots_free": max(total - used, 0),
            "running": self.running(),
            "held": len(worker_state.reserved_requests),
            "maintenance": self.maintenance,
            "maintenance_comment": self.maintenance_comment,
            "stopping": self.stopping,
            "connected": self.attached,
            "version_warning": self.version_warning,
            "api_url": self.client.base_url,
            "api_reachable": self.api_reachable,
            "api_error": self.api_error,
            "last_heartbeat": self.last_heartbeat,
        }

    # -- heartbeats -----------------------------------------------------------------------

    def _beat(self, state: str) -> dict:
        total, used = self.slots()
        connection = getattr(self.consumer, "connection", None)
        body = {
            "name": self.name,
            "instance": self.instance,
            "state": state,
            "slots_total": max(total, 1),
            "slots_used": used,
            "running": self.running(),
            "sysinfo": sysinfo.sysinfo(),
            "versions": sysinfo.versions(),
            "session": getattr(connection.transport, "session_id", None) if connection else None,
        }
        with self._lock:
            body.update(
                queues=list(self.queues),
                maintenance=self.maintenance,
                maintenance_comment=self.maintenance_comment,
                maintenance_changed_at=self.maintenance_changed_at,
            )
        return body

    def register(self) -> dict:
        """The first heartbeat (state ``starting``); raises what the API answers."""
        sysinfo.prime()
        generation = self._generation
        answer = self.client.call("worker/heartbeat", self._beat(WORKER_STARTING),
                                  timeout=REQUEST_TIMEOUT)
        self.api_reachable = True
        self.last_heartbeat = time.time()
        self._apply_answer(answer, generation)
        return answer

    def heartbeat(self, state: str) -> bool:
        generation = self._generation
        body = self._beat(state)
        try:
            answer = self.client.call("worker/heartbeat", body, timeout=REQUEST_TIMEOUT)
        except errors.EdgeError as exc:
            self._heartbeat_failed(exc)
            return False
        if self.api_reachable is False or self.api_error:
            log.warning("edge API at %s accepts heartbeats again", self.client.base_url)
        self.api_reachable, self.api_error = True, None
        self.last_heartbeat = time.time()
        self._apply_answer(answer, generation)
        return True

    def _heartbeat_failed(self, exc: errors.EdgeError) -> None:
        message = exc.message or type(exc).__name__
        unreachable = isinstance(exc, errors.EdgeConnectionError | errors.ServiceUnavailable)
        if unreachable:
            if self.api_reachable is not False:
                log.warning("edge API unreachable, the worker carries on and retries its "
                            "heartbeat every %.0fs: %s", self.interval, message)
        elif self.api_error != message:
            log.error("heartbeat refused by the edge API: %s", message)
        self.api_reachable, self.api_error = not unreachable, message

    def _apply_answer(self, answer: dict, generation: int) -> None:
        changed = False
        with self._lock:
            self.server_state = answer.get("state")
            self.version_warning = answer.get("version_warning")
            # A local maintenance change made while this heartbeat was under way wins:
            # the next heartbeat carries it.
            if generation == self._generation:
                maintenance = bool(answer.get("maintenance"))
                if maintenance != self.maintenance:
                    log.warning("maintenance %s (edge API)%s", "on" if maintenance else "off",
                                f": {answer.get('maintenance_comment')}"
                                if maintenance and answer.get("maintenance_comment") else "")
                    self.maintenance = maintenance
                    changed = True
                self.maintenance_comment = answer.get("maintenance_comment")
            queues = answer.get("queues")
            if queues is not None:
                queues = [team_queue(self.team, name) for name in queues]
            if queues is not None and queues != self.queues:
                log.warning("task queues changed by the edge API: %s -> %s",
                            ",".join(self.queues), ",".join(queues))
                self.queues = queues
                changed = True
            concurrency = answer.get("concurrency")
            if concurrency and concurrency != self.concurrency:
                log.warning("slot budget changed by the edge API: %d -> %d",
                            self.concurrency, concurrency)
                self.concurrency = self._pending_concurrency = concurrency
                changed = True
        if answer.get("shutdown") and not self.stopping:
            self.request_stop(None, "shutdown requested by the edge API")
        elif changed:
            self.request_reconcile()

    def _run(self) -> None:
        last_state, next_beat = None, 0.0
        while not self._closed.is_set():
            try:
                self._watch_drain()
                state = self.reported_state()
                now = time.monotonic()
                if state != last_state or now >= next_beat or self._wake.is_set():
                    self._wake.clear()
                    self.heartbeat(state)
                    last_state, next_beat = state, time.monotonic() + self.interval
            except Exception:  # noqa: BLE001 - the heartbeat thread must not die
                log.exception("edge heartbeat failed")
                next_beat = time.monotonic() + self.interval
            self._wake.wait(TICK)

    # -- consumer side (runs on the consumer's thread) ----------------------------------

    def attach(self, consumer) -> None:
        """The consumer (re)started: make it follow the desired state before it consumes."""
        self.consumer = consumer
        self._reconcile(consumer, pre_loop=True)
        self.attached = True
        if self._thread is None:
            log.info("edge worker %s registered with %s (heartbeat every %gs, control socket %s)",
                     self.name, self.client.base_url, self.interval, self.socket_path)
            if self.maintenance:
                log.warning("in maintenance (%s): taking no tasks until maintenance is off",
                            self.maintenance_comment or "no comment")
            self._thread = threading.Thread(target=self._run, name="edge-kombu-heartbeat",
                                            daemon=True)
            self._thread.start()

    def detach(self) -> None:
        """The consumer stopped (connection lost, or exit): it consumes nothing now."""
        with self._applied:
            self.attached = False
            self.consuming = []
            self._applied.notify_all()
        self._wake.set()

    def request_reconcile(self) -> None:
        consumer = self.consumer
        if consumer is not None:
            consumer.call_soon(self._reconcile, consumer)  # nudges the drain itself
        self._wake.set()

    def _reconcile(self, consumer, pre_loop: bool = False) -> None:
        tasks = consumer.task_consumer
        if tasks is None:
            return
        with self._lock:
            maintenance = self.maintenance
            target = [] if maintenance or self.stopping else list(self.queues)
            resize, self._pending_concurrency = self._pending_concurrency, None
        if resize:
            self._resize(consumer, resize)
        current = [queue.name for queue in tasks.queues]
        changed = False
        for name in current:
            if name not in target:
                consumer.app.amqp.queues.deselect(name)
                tasks.cancel_by_queue(name)
                changed = True
        for name in target:
            if name not in current:
                self._add_queue(consumer, name, start=not pre_loop)
                changed = True
        if changed:
            log.info("consuming task queues: %s", ",".join(target) or "(none)")
            if not pre_loop:
                # Cut short a long-poll that still asks for the cancelled queues.
                consumer.connection.transport.consumers_changed()
        with self._applied:
            self.consuming = target
            self.applied_maintenance = maintenance
            self._applied.notify_all()
        self._wake.set()

    @staticmethod
    def _add_queue(consumer, name: str, start: bool) -> None:
        queues = consumer.app.amqp.queues
        if name in queues:
            queue = queues.select_add(queues[name])
        else:
            queue = queues.select_add(name, exchange=name, exchange_type="direct",
                                      routing_key=name)
        tasks = consumer.task_consumer
        tasks.add_queue(queue)
        if start:  # before the loop starts, the loop's own consume() starts it
            tasks.consume()

    def _resize(self, consumer, slots: int) -> None:
        pool = consumer.pool
        if not hasattr(pool, "resize"):
            log.warning("pool %s cannot change its size; the slot budget stays",
                        type(pool).__name__)
            return
        pool.resize(slots)
        prefetch = slots * consumer.prefetch_multiplier
        consumer.initial_prefetch_count = prefetch  # used again after a reconnect
        if consumer.qos is not None:
            consumer.qos.value = prefetch
            consumer.qos.update()  # the channel's slot budget (basic_qos)

    def _terminate_held(self, consumer) -> None:
        held = _snapshot(worker_state.reserved_requests)
        log.warning("drain timeout: terminating %d task(s)", len(held))
        if not getattr(consumer.pool, "kills_tasks", True):
            # Tasks on threads cannot be killed one by one: report them revoked (stored,
            # acknowledged, as a terminate does) and leave at once, without them.
            for request in held:
                request._announce_revoked("terminated", terminated=True, signum="SIGTERM",
                                          expired=False)
            self._exit_requested = True
            worker_state.should_terminate = 0  # Celery's cold shutdown, exit code 0
            nudge_consumers()
            return
        for request in held:
            try:
                request.terminate(consumer.pool, signal="SIGTERM")
            except Exception:  # noqa: BLE001 - terminate the others all the same
                log.exception("could not terminate task %s", request.id)

    # -- requests from the control socket -------------------------------------------------

    def set_maintenance(self, on: bool, comment: str | None) -> None:
        """Local maintenance switch; returns once the consumer applied it."""
        with self._lock:
            self._generation += 1
            self.maintenance = on
            self.maintenance_comment = comment if on else None
            self.maintenance_changed_at = time.time()
        log.warning("maintenance %s (local command)%s", "on" if on else "off",
                    f": {comment}" if on and comment else "")
        self.request_reconcile()
        self._wait_applied(lambda: self.applied_maintenance == on or not self.attached)

    def _wait_applied(self, predicate) -> None:
        with self._applied:
            self._applied.wait_for(predicate, timeout=APPLY_TIMEOUT)

    def request_stop(self, drain_timeout: float | None, reason: str) -> None:
        with self._lock:
            deadline = None if drain_timeout is None else time.monotonic() + drain_timeout
            if self.stopping:
                if deadline is not None and (self._drain_deadline is None
                                             or deadline < self._drain_deadline):
                    self._drain_deadline = deadline
                return
            self.stopping, self.stop_reason, self._drain_deadline = True, reason, deadline
        log.warning("%s: no new tasks; %d held task(s) finish%s, then the worker exits", reason,
                    len(worker_state.reserved_requests),
                    "" if drain_timeout is None else f" within {drain_timeout:g}s")
        self.request_reconcile()

    def shutting_down(self) -> None:
        """Celery began a warm shutdown by itself: report ``terminating`` from now on."""
        with self._lock:
            self.stopping = True
            self.stop_reason = self.stop_reason or "warm shutdown"
            self._exit_requested = True  # Celery drains and exits without our help
        self._wake.set()

    def _watch_drain(self) -> None:
        consumer = self.consumer
        if not self.stopping or self._exit_requested or consumer is None:
            return
        if not self.busy():
            self._exit_requested = True
            log.warning("drained: warm shutdown")
            worker_state.should_stop = 0  # Celery's warm shutdown, exit code 0
            nudge_consumers()
        elif (self._drain_deadline is not None and time.monotonic() > self._drain_deadline
              and not self._terminating):
            self._terminating = True
            consumer.call_soon(self._terminate_held, consumer)

    def handle(self, payload: dict) -> dict:
        """Dispatch one control request (see :mod:`edge_kombu.worker.control`)."""
        command = payload.get("command")
        if command == "status":
            pass
        elif command == "maintenance":
            on = payload["on"]
            if not isinstance(on, bool):
                raise ValueError("'on' must be true or false")
            comment = payload.get("comment")
            if comment is not None and len(str(comment)) > 1024:
                raise ValueError("maintenance comments are limited to 1024 characters")
            self.set_maintenance(on, None if comment is None else str(comment))
        elif command == "stop":
            timeout = payload.get("drain_timeout")
            if timeout is not None and (not isinstance(timeout, int | float) or timeout < 0):
                raise ValueError("'drain_timeout' must be a number of seconds >= 0")
            self.request_stop(timeout, "stop requested (local command)")
        else:
            raise ValueError(f"unknown command {command!r}: status, maintenance or stop")
        return self.status()

    # -- exit -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop heartbeating and tell the API this worker went offline (idempotent)."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(REQUEST_TIMEOUT)
        try:
            self.client.call("worker/deregister", {
                "name": self.name, "instance": self.instance, "maintenance": self.maintenance,
            }, timeout=REQUEST_TIMEOUT)
        except errors.EdgeError as exc:
            log.warning("could not deregister from the edge API (%s); it marks this worker "
                        "unknown once the heartbeats stop", exc.message)
