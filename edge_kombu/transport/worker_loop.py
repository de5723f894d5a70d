"""Celery's synchronous worker loop over the edge transport: queued work runs at once.

A Celery worker on a transport without an event loop of its own runs ``synloop``:
``drain_events(timeout=2)`` again and again, and between two calls the work other
threads handed to the consumer with ``Consumer.call_soon`` (every task acknowledgement,
control commands) and the check for a shutdown request. A finished task's ack would
wait for the end of a drain. The consumer step installed here makes ``call_soon``
nudge the edge connections, so the loop runs it right away; and the transport ends a
drain early once :func:`celery_worker_stopping`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from celery import bootsteps, signals


def _step(nudge: Callable[[], None]) -> type[bootsteps.Step]:
    class NudgeOnCallSoon(bootsteps.Step):
        """Wraps the consumer's ``call_soon`` before the task handler captures it."""

        name = "edge_kombu.transport.worker_loop.NudgeOnCallSoon"

        def __init__(self, consumer, **kwargs) -> None:
            super().__init__(consumer, **kwargs)
            queue = consumer.call_soon

            def call_soon(p, *args, **kw):
                promise = queue(p, *args, **kw)
                if consumer.hub is None:  # synloop: nothing else would run it soon
                    nudge()
                return promise

            consumer.call_soon = call_soon

    return NudgeOnCallSoon


def celery_worker_stopping() -> bool:
    """True once this process's Celery worker was asked to stop (warm or cold)."""
    state = sys.modules.get("celery.worker.state")  # loaded only in a worker
    if state is None:
        return False
    # As celery.worker.state.maybe_shutdown reads them: 0 is an exit code, False is unset.
    return any(flag is not None and flag is not False
               for flag in (state.should_stop, state.should_terminate))


def install(nudge: Callable[[], None]) -> None:
    """Add the step to the consumer of every Celery worker this process starts."""
    step = _step(nudge)

    def add_step(sender=None, **kwargs) -> None:
        app = getattr(sender, "app", None)
        if app is not None:
            app.steps["consumer"].add(step)

    signals.worker_init.connect(add_step, weak=False,
                                dispatch_uid="edge_kombu.transport.worker_loop")
