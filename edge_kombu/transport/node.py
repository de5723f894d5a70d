"""Which Celery worker this process is, told to the server with every consume.

A plain ``celery worker`` (one whose app does not install edge_kombu's worker, which
registers by heartbeats) is registered by the server from its consumer session; this
module gives it the worker's node name, pool, concurrency and versions. They are known
once Celery's ``worker_ready`` signal fired; before that (and outside a worker) the
server goes by the worker's mailbox queue, if it consumes one.
"""

from __future__ import annotations

import platform

_node: dict | None = None


def current() -> dict | None:
    """The Celery worker of this process, as the ``node`` of a consume; None if unknown."""
    return _node


def _versions() -> dict:
    from edge_kombu.protocol import VERSION

    found = {"edge_kombu": VERSION, "python": platform.python_version()}
    for name in ("celery", "kombu"):
        try:
            found[name] = str(__import__(name).__version__)[:64]
        except (ImportError, AttributeError):
            pass
    return found


def note_worker(sender=None, **_) -> None:
    """``worker_ready`` receiver: ``sender`` is the worker's consumer."""
    global _node
    hostname = getattr(sender, "hostname", None)
    if not hostname:
        return
    controller = getattr(sender, "controller", None)
    concurrency = getattr(controller, "concurrency", None)
    pool = getattr(sender, "pool", None)
    node = {"name": str(hostname)[:200], "versions": _versions()}
    if isinstance(concurrency, int) and concurrency >= 1:
        node["concurrency"] = concurrency
    if pool is not None:
        node["pool"] = f"{type(pool).__module__.rsplit('.', 1)[-1]}"[:64]
    _node = node


try:
    from celery import signals
except ImportError:  # kombu without Celery
    pass
else:
    signals.worker_ready.connect(note_worker, weak=False)
