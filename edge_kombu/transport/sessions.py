"""Consumer sessions that outlive a connection: acks made across a reconnect still settle.

The server leases every message it hands out to a consumer *session*. Celery drops a
connection that failed (the API restarting, a network outage) and consumes again over a
new one; tasks started before the outage finish afterwards and acknowledge their
messages through the old, dead connection. Were the new connection to open a new
session, those acks would match no lease and the tasks would run again once the old
session expired.

So a session belongs to the process, not to one connection: a connection lost to an
error leaves its :class:`ConsumerSession` behind (:func:`leave`), and the next
connection of the process with the same credential that consumes with acknowledgements
takes it over (:func:`take_over`). Both connections then settle against the same
session id; settlements that failed while the API was away wait in the session's
``deferred`` queue, which the new connection sends before its first consume.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque

#: Sessions left behind per identity that no connection took over yet; older ones beyond
#: this are forgotten (the server expires them, releasing their leases).
MAX_LEFT_BEHIND = 4


class ConsumerSession:
    """One consumer identity on the server, shared by the connections that used it."""

    def __init__(self) -> None:
        self.id = uuid.uuid4().hex
        #: ``(verb, body)`` settlements to send again once the API answers.
        self.deferred: deque[tuple[str, dict]] = deque()
        #: Channels of earlier connections: their acks may still come, and are flushed
        #: before the session is closed.
        self.earlier_channels: list = []
        #: The server said this session is closed: nothing settles against it any more.
        self.closed = False
        #: Messages were taken under this session with acknowledgement: worth handing on.
        self.acking = False

    def __repr__(self) -> str:
        return f"<ConsumerSession {self.id}>"


_left_behind: dict[tuple, deque[ConsumerSession]] = {}
_lock = threading.Lock()


def leave(identity: tuple, session: ConsumerSession, channels: list) -> None:
    """Leave ``session`` (of a connection lost to an error) for the next connection."""
    if session.closed or not session.acking:
        return
    session.earlier_channels.extend(channels)
    with _lock:
        waiting = _left_behind.setdefault(identity, deque(maxlen=MAX_LEFT_BEHIND))
        if session not in waiting:
            waiting.append(session)


def take_over(identity: tuple) -> ConsumerSession | None:
    """The newest session left behind for ``identity``, if any; it is no longer waiting."""
    with _lock:
        waiting = _left_behind.get(identity)
        if not waiting:
            return None
        session = waiting.pop()
        if not waiting:
            del _left_behind[identity]
        return session


def waiting_ids(identity: tuple) -> list[str]:
    """The ids of the sessions of ``identity`` waiting to be taken over, newest first."""
    with _lock:
        return [session.id for session in reversed(_left_behind.get(identity, ()))]


def lost_before(identity: tuple) -> bool:
    """True while a session of ``identity`` waits to be taken over (a reconnect is due)."""
    with _lock:
        return bool(_left_behind.get(identity))
