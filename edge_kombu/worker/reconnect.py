"""A lost connection forgets no task: what Celery drops on reconnect goes back to the queue.

When its connection fails, Celery's consumer (``Consumer.on_close``) forgets the tasks
it holds back for their rate limit, because over AMQP a delivery tag dies with its
channel and the broker redelivers them anyway. Over the edge transport the consumer
session outlives the connection (:mod:`edge_kombu.transport.sessions`), so the server
would keep those messages leased to a session that no longer means to run them. The
step added here rejects them with requeue instead: they go back to their queue as soon
as the API answers again, not when a lease times out.

Everything else Celery received stays with this worker: without an event loop of its
own (the edge transport has none) the pool keeps the tasks it was given, which run and
acknowledge through the carried-on session.
"""

from __future__ import annotations

import logging

from celery import bootsteps

log = logging.getLogger(__name__)


class RequeueForgottenOnReconnect(bootsteps.Step):
    """Wraps the consumer's ``on_close`` to requeue the requests it drops."""

    name = "edge_kombu.worker.reconnect.RequeueForgottenOnReconnect"

    def __init__(self, consumer, **kwargs) -> None:
        super().__init__(consumer, **kwargs)
        forget = consumer.on_close

        def on_close():
            held = rate_limited(consumer)
            forget()
            if held:
                log.info("requeueing %d rate-limited task(s) after the lost connection",
                         len(held))
            for request in held:
                try:
                    request.reject(requeue=True)
                except Exception as exc:  # noqa: BLE001 - the next one must go back too
                    log.warning("could not requeue task %s: %s", request.id, exc)

        consumer.on_close = on_close


def rate_limited(consumer) -> list:
    """The requests waiting in the consumer's rate-limit buckets."""
    buckets = getattr(consumer, "task_buckets", None) or {}
    return [request for bucket in list(buckets.values()) if bucket
            for request, _tokens in list(bucket.contents)]
