"""Celery's synchronous worker loop over the edge transport: queued work runs at once.

A Celery worker on a transport without an event loop of its own runs ``synloop``: the
work other threads hand to the consumer with ``Consumer.call_soon`` (every task
acknowledgement, remote-control replies) runs only between two ``drain_events``
calls, and the edge transport returns from those within a 0.1 s slice. With a pool
whose tasks end in other threads (``-P threads``, ``-P prefork``'s result handler), a
finished task's ack would wait for the end of the slice: one batch of tasks per slice.
The consumer step installed here makes ``call_soon`` nudge the edge connections, so the
loop runs the ack right away.
"""

from __future__ import annotations

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


def install(nudge: Callable[[], None]) -> None:
    """Add the step to the consumer of every Celery worker this process starts."""
    step = _step(nudge)

    def add_step(sender=None, **kwargs) -> None:
        app = getattr(sender, "app", None)
        if app is not None:
            app.steps["consumer"].add(step)

    signals.worker_init.connect(add_step, weak=False,
                                dispatch_uid="edge_kombu.transport.worker_loop")
