"""Flower's Broker page and ``/api/queues/length`` over the edge API.

Flower (2.x) reads queue lengths with a broker client of its own and knows only AMQP
(RabbitMQ's management API) and Redis; for any other URL it answers 404. In a Flower
process (``celery -A edge_kombu flower`` or ``celery --broker edge+https://… flower``)
:func:`install` teaches it ``edge+http(s)://``: each queue's length is a passive
``queue/declare`` through the same transport, with the same token and TLS settings as
the workers. Flower shows *Ready* (waiting messages) and *Consumers* (live consumer
sessions); *Messages* is ready plus nothing else it can see, *Unacked* and *Idle since*
stay empty (the edge Queues page and ``/metrics`` show leased messages).

Flower has no plugin interface for brokers: :func:`install` wraps its ``Broker``
factory. :mod:`edge_kombu` calls it when Flower starts (Flower's start-up loads the
app's task modules, which sends Celery's ``import_modules`` signal).
"""

from __future__ import annotations

import asyncio
from types import ModuleType

from kombu import Connection

from edge_kombu import errors


class EdgeBroker:
    """Flower's broker interface (``async queues(names)``) on the edge transport."""

    def __init__(self, broker_url: str, *_args, broker_options=None, broker_use_ssl=None,
                 **_kwargs) -> None:
        self.broker_url = broker_url
        self.transport_options = broker_options or {}
        self.ssl = broker_use_ssl

    def _lengths(self, names: list[str]) -> list[dict]:
        found = []
        with Connection(self.broker_url, transport_options=self.transport_options,
                        ssl=self.ssl) as conn:
            channel = conn.default_channel
            for name in names:
                try:
                    ok = channel.queue_declare(name, passive=True)
                except errors.NotFound:
                    continue  # Flower asks for every queue a worker reported; some are gone
                found.append({"name": name, "messages": ok.message_count,
                              "messages_ready": ok.message_count,
                              "consumers": ok.consumer_count})
        return found

    async def queues(self, names) -> list[dict]:
        return await asyncio.get_running_loop().run_in_executor(None, self._lengths, list(names))


def install(views: ModuleType) -> None:
    """Route ``edge+`` broker URLs of Flower's ``views`` module to :class:`EdgeBroker` (once)."""
    if getattr(views.Broker, "edge_kombu", False):
        return
    original = views.Broker

    class Broker:
        """Flower's broker factory, plus ``edge+http(s)://``."""

        edge_kombu = True

        def __new__(cls, broker_url, *args, **kwargs):
            if broker_url.startswith("edge+"):
                return EdgeBroker(broker_url, *args, **kwargs)
            return original(broker_url, *args, **kwargs)

    views.Broker = Broker
