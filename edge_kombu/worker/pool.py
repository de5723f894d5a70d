"""SlotPool: Celery's prefork pool, admitting tasks by their weight in slots
(ThreadSlotPool: the same on threads, for hosts without ``fork``).

``-c N`` (``worker_concurrency``) is the worker's slot budget. A task weighs its
``pool_slots`` message header (default 1). A task starts only while the slots of
the running tasks plus its own stay within the budget; otherwise it waits, in
arrival order, until enough slots are free. Each task runs in a child process as
with ``-P prefork``: a task that kills its process (``os._exit``, a segfault) fails
with ``WorkerLostError`` and frees its slots, and the worker carries on.

The transport already reserves only messages that fit the free slots (see
:class:`edge_kombu.transport.kombu.SlotQoS`); the pool is the second guard for
what reservation cannot see: ETA tasks coming due, and tasks acknowledged early.

Use it with ``celery worker -P edge_kombu.worker.pool:SlotPool`` (the edge app's
default on POSIX). ``-P edge_kombu.worker.pool:ThreadSlotPool`` (the default elsewhere,
e.g. Windows) runs tasks on threads of the worker process: same admission, no ``fork``;
a task that kills its process takes the worker with it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import Any

from celery.concurrency import prefork
from celery.concurrency.base import BasePool, apply_target

from edge_kombu.protocol import pool_slots
from edge_kombu.transport.kombu import nudge_consumers

log = logging.getLogger(__name__)


def request_slots(args: Any) -> int:
    """Slots of a task from the arguments Celery gives the pool.

    ``args`` is ``(task_name, task_id, request_dict, body, content_type,
    content_encoding)``; ``request_dict`` holds the message headers.
    """
    try:
        request = args[2]
    except (IndexError, TypeError):
        return 1
    return pool_slots(request if isinstance(request, dict) else None)


class _SlotAdmission:
    """A Celery pool whose concurrency is a budget of slots (mixed into a real pool)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.slots_total = self.limit
        self.slots_used = 0
        self._waiting: deque[tuple] = deque()
        self._lock = threading.Lock()

    def apply_async(self, target, args=None, kwargs=None, **options):
        slots = request_slots(args)
        if slots > self.slots_total:
            log.warning("task %s needs %d slots but this worker has %d; it runs alone",
                        (args or [None, None])[1], slots, self.slots_total)
        with self._lock:
            if self._fits(slots) and not self._waiting:
                self.slots_used += slots
            else:
                self._waiting.append((target, args, kwargs, options, slots))
                return None
        return self._start(target, args, kwargs, options, slots)

    def _fits(self, slots: int) -> bool:
        # A task bigger than the whole budget may still run, alone.
        return self.slots_used + slots <= self.slots_total or self.slots_used == 0

    def _start(self, target, args, kwargs, options, slots):
        released = threading.Event()

        def release() -> None:
            if not released.is_set():
                released.set()
                self._release(slots)

        def wrap(callback):
            def on_done(*a, **kw):
                try:
                    if callback is not None:
                        return callback(*a, **kw)
                finally:
                    release()
                    # The callback queued the task's ack (its call_soon nudged already);
                    # nudge again now the pool's slots are free too.
                    nudge_consumers()

            return on_done

        options = dict(options)
        options["callback"] = wrap(options.get("callback"))
        options["error_callback"] = wrap(options.get("error_callback"))
        try:
            result = super().apply_async(target, args, kwargs, **options)
        except BaseException:
            release()
            raise
        self._on_end(result, release)
        return result

    def _on_end(self, result, release) -> None:
        """Make sure ``release`` runs when the task ends however it ends (the pool's
        callbacks already do where the pool calls one of them on every end)."""

    def _release(self, slots: int) -> None:
        ready = []
        with self._lock:
            self.slots_used -= slots
            # Strict arrival order: a big task at the head is not overtaken by small
            # ones behind it, so it cannot starve.
            while self._waiting and self._fits(self._waiting[0][4]):
                job = self._waiting.popleft()
                self.slots_used += job[4]
                ready.append(job)
        for target, args, kwargs, options, slots in ready:
            self._start(target, args, kwargs, options, slots)

    def on_start(self) -> None:
        super().on_start()
        # ``celery control pool_grow/pool_shrink`` change the slot budget, not just processes.
        self.grow = lambda n=1: self.resize(self.slots_total + n)
        self.shrink = lambda n=1: self.resize(self.slots_total - n)

    @property
    def num_processes(self) -> int:
        # Celery derives the prefetch budget from this: keep it equal to the slot budget,
        # also while a surplus busy process is kept after a shrink.
        return self.slots_total

    def resize(self, slots: int) -> None:
        """Change the slot budget: resize the workers, start tasks that now fit."""
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        with self._lock:
            old, self.slots_total, self.limit = self.slots_total, slots, slots
        self._resize_workers(slots)
        log.info("slot budget changed from %d to %d", old, slots)
        self._release(0)

    def _resize_workers(self, slots: int) -> None:
        raise NotImplementedError

    def _get_info(self) -> dict:
        info = super()._get_info()
        with self._lock:
            info["slots"] = {
                "total": self.slots_total,
                "used": self.slots_used,
                "free": max(self.slots_total - self.slots_used, 0),
                "waiting": len(self._waiting),
            }
        return info


class SlotPool(_SlotAdmission, prefork.TaskPool):
    """Prefork pool whose concurrency is a budget of slots."""

    def _resize_workers(self, slots: int) -> None:
        # Busy processes are not killed: a shrink retires idle processes only (the
        # running tasks finish; admission already counts the new budget).
        pool = getattr(self, "_pool", None)
        if pool is None:
            return
        processes = pool._processes
        if slots > processes:
            pool.grow(slots - processes)
        elif slots < processes:
            try:
                pool.shrink(processes - slots)
            except ValueError:
                # Surplus processes stay idle: admission follows the slot budget.
                log.info("%d busy process(es) kept", pool._processes - slots)


class _Run:
    """One task on its own daemon thread; what Celery keeps of it (weakly)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ended = False
        self._on_end: list = []
        self.thread: threading.Thread | None = None

    def add_done_callback(self, fn) -> None:
        with self._lock:
            if not self._ended:
                self._on_end.append(fn)
                return
        fn()

    def finish(self) -> None:
        with self._lock:
            self._ended, callbacks = True, self._on_end
        for fn in callbacks:
            fn()


class ThreadSlotPool(_SlotAdmission, BasePool):
    """Slot admission on threads of the worker process (no ``fork`` needed).

    One daemon thread per running task (the slot budget bounds them). A warm shutdown
    waits for the running tasks; a cold one does not (their threads end with the
    process). A thread cannot be killed: ``kills_tasks`` is False, and past a drain
    timeout the worker reports the held tasks revoked and exits (see lifecycle).
    """

    body_can_be_buffer = True
    signal_safe = False
    kills_tasks = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._runs: set[_Run] = set()

    def on_apply(self, target, args=None, kwargs=None, callback=None, accept_callback=None,
                 **_options) -> _Run:
        run = _Run()

        def work() -> None:
            try:
                apply_target(target, args, kwargs, callback, accept_callback)
            except BaseException:  # noqa: BLE001 - a trace that raised: its slots still free
                log.exception("task raised out of Celery's trace")
            finally:
                self._runs.discard(run)
                run.finish()

        self._runs.add(run)
        run.thread = threading.Thread(target=work, name="edge-kombu-task", daemon=True)
        run.thread.start()
        return run

    def _on_end(self, result, release) -> None:
        result.add_done_callback(release)  # also when no callback ran (release is once)

    def on_stop(self) -> None:
        for run in list(self._runs):  # warm shutdown: the running tasks finish
            if run.thread is not None:
                run.thread.join()

    def _resize_workers(self, slots: int) -> None:
        """Threads come and go with the tasks: nothing to resize."""

    def _get_info(self) -> dict:
        info = super()._get_info()
        info["threads"] = len(self._runs)
        return info
