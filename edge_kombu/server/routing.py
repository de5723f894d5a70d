"""Exchange routing rules (direct, topic, fanout), evaluated on the server.

Topic patterns are kombu's own (``*`` one word, ``#`` any number of words), so a
binding behaves exactly as with kombu's in-memory transports.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from functools import lru_cache

from kombu.transport.virtual.exchange import TopicExchange

_TOPIC = TopicExchange(channel=None)


def binding_id(exchange: str, queue: str, routing_key: str) -> str:
    """A fixed-length key identifying one binding."""
    raw = "\x00".join((exchange, queue, routing_key)).encode()
    return hashlib.sha1(raw).hexdigest()


@lru_cache(maxsize=4096)
def topic_regex(binding_key: str) -> re.Pattern:
    """The compiled regex of a topic binding key (kombu's own conversion)."""
    return re.compile(_TOPIC.key_to_pattern(binding_key))


def route(exchange_type: str, bindings: Iterable[tuple[str, str]], routing_key: str) -> set[str]:
    """Queues that a message with ``routing_key`` reaches.

    ``bindings`` holds ``(binding_key, queue)`` rows of one exchange.
    """
    if exchange_type == "fanout":
        return {queue for _, queue in bindings}
    if exchange_type == "topic":
        return {queue for key, queue in bindings if topic_regex(key).match(routing_key)}
    return {queue for key, queue in bindings if key == routing_key}
