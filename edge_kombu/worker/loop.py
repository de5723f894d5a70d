"""Celery's synchronous worker loop over the edge transport: queued work runs at once.

A Celery worker on a transport without an event loop of its own runs ``synloop``:
``drain_events(timeout=2)`` again and again, and between two calls the work other
threads handed to the consumer with ``Consumer.call_soon`` (every task acknowledgement,
control commands) and the check for a shutdown request. A finished task's ack would
wait for the end of a drain. The consumer step added here makes ``call_soon`` nudge the
edge connections, so the loop runs it right away (the transport itself ends a drain
early once the worker is stopping).

Every Celery worker of a process that imported :mod:`edge_kombu` gets the step, whatever
its app: :mod:`edge_kombu` connects :func:`add_step` to Celery's ``worker_init`` signal,
which fires before the worker builds its consumer. Without edge connections the nudge
does nothing.
"""

from __future__ import annotations

from celery import bootsteps

from edge_kombu.transport.kombu import nudge_consumers
from edge_kombu.worker.reconnect import RequeueForgottenOnReconnect


class NudgeOnCallSoon(bootsteps.Step):
    """Wraps the consumer's ``call_soon`` before the task handler captures it."""

    name = "edge_kombu.worker.loop.NudgeOnCallSoon"

    def __init__(self, consumer, **kwargs) -> None:
        super().__init__(consumer, **kwargs)
        queue = consumer.call_soon

        def call_soon(p, *args, **kw):
            promise = queue(p, *args, **kw)
            if consumer.hub is None:  # synloop: nothing else would run it soon
                nudge_consumers()
            return promise

        consumer.call_soon = call_soon


def add_step(worker) -> None:
    """Give the consumer of ``worker`` (a Celery ``WorkController``) the edge steps: the
    nudge, and requeueing what a lost connection makes Celery forget."""
    app = getattr(worker, "app", None)
    if app is not None:
        app.steps["consumer"].add(NudgeOnCallSoon)
        app.steps["consumer"].add(RequeueForgottenOnReconnect)
