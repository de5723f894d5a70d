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


def binding_pattern(exchange_type: str, routing_key: str) -> str | None:
    """The stored regex of a binding: only topic exchanges have one."""
    if exchange_type == "topic":
        return _TOPIC.key_to_pattern(routing_key)
    return None


def binding_id(exchange: str, queue: str, routing_key: str) -> str:
    """A fixed-length key identifying one binding."""
    raw = "\x00".join((exchange, queue, routing_key)).encode()
    return hashlib.sha1(raw).hexdigest()


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def route(
    exchange_type: str, bindings: Iterable[tuple[str, str | None, str]], routing_key: str
) -> set[str]:
    """Queues that a message with ``routing_key`` reaches.

    ``bindings`` holds ``(routing_key, pattern, queue)`` rows of one exchange.
    """
    if exchange_type == "fanout":
        return {queue for _, _, queue in bindings}
    if exchange_type == "topic":
        return {
            queue
            for _, pattern, queue in bindings
            if pattern and _compiled(pattern).match(routing_key)
        }
    return {queue for key, _, queue in bindings if key == routing_key}
