"""What a credential may do on the edge API: everything (central), or one site's work.

A :class:`Scope` is what :mod:`~edge_kombu.server.auth` makes of a credential. A central
scope may do everything the API offers (the scheduler, Flower, ``celery inspect/control``
at the centre). A worker scope names the workers it may speak for (a name or an
``fnmatch`` pattern such as ``wisconsin-*``), the task queues it may consume and publish
to, and the further queues it may publish to (Celery retries and chord callbacks).
Besides its task queues a worker uses Celery's private queues, which these names come
from (kombu's ``pidbox``, Celery's events):

* its remote-control queue ``<hostname>.celery.pidbox``, bound to the fanout exchange
  ``celery.pidbox`` (the hostname is a worker name of the scope);
* reply queues ``<oid>.reply.celery.pidbox`` (exchange ``reply.celery.pidbox``, routing
  key ``<oid>``) and event queues ``celeryev.<uuid>`` (exchange ``celeryev``) that it
  declared itself: the broker records the declaring credential as the queue's owner.

The methods raise :class:`~edge_kombu.errors.Forbidden` with a message naming what the
credential may do; results and task logs are checked against the task grants
(:mod:`~edge_kombu.server.grants`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from edge_kombu import errors

CONTROL_EXCHANGE = "celery.pidbox"
REPLY_EXCHANGE = "reply.celery.pidbox"
EVENT_EXCHANGE = "celeryev"
PIDBOX_SUFFIX = ".celery.pidbox"
REPLY_SUFFIX = ".reply.celery.pidbox"
EVENT_PREFIX = "celeryev."

CENTRAL = "central"
WORKER = "worker"
#: Manages workers, queues, jobs and tokens through ``/api/v1/manage/``; no broker routes.
ADMIN = "admin"
KINDS = (CENTRAL, WORKER, ADMIN)
#: The queue a worker credential may consume when created without ``--queues``.
DEFAULT_QUEUES = ("celery",)


def _always(fresh: bool = False) -> bool:
    return True


@dataclass(frozen=True)
class Scope:
    """A caller and what it may do; ``still_valid(fresh=False)`` re-checks revocation and
    expiry (``fresh``: not from a cache); ``valid_until`` is when the credential expires
    (epoch seconds; None: it does not), when a waiting long-poll must check it again."""

    name: str
    central: bool
    workers: str = ""
    queues: frozenset[str] = frozenset()
    publish: frozenset[str] = frozenset()
    still_valid: Callable[..., bool] = field(default=_always, compare=False, repr=False)
    valid_until: float | None = None
    #: An admin credential: the management API only (``central`` and ``workers`` unset).
    admin: bool = False

    @classmethod
    def for_worker(cls, name: str, workers: str, queues: Iterable[str],
                   publish: Iterable[str] = (), still_valid: Callable[..., bool] = _always,
                   valid_until: float | None = None) -> Scope:
        return cls(name, False, workers, frozenset(queues), frozenset(publish), still_valid,
                   valid_until)

    # -- what it may do, in words -----------------------------------------------------------

    def describe(self) -> str:
        if self.admin:
            return (f"credential {self.name!r} is an admin token: it may use the management "
                    "API (/api/v1/manage/) only, not the broker routes")
        if self.central:
            return f"credential {self.name!r} is central"
        publish = sorted(self.queues | self.publish)
        return (
            f"credential {self.name!r} is scoped to workers {self.workers!r}: it may consume "
            f"queues {sorted(self.queues)} and its own remote-control and reply queues, publish "
            f"tasks to {publish}, remote-control replies and task events, and read or write "
            "the results and logs of tasks delivered to it; anything else needs a central "
            "credential ('edge-kombu token create --central NAME')"
        )

    def forbid(self, what: str) -> errors.Forbidden:
        return errors.Forbidden(f"{what}: {self.describe()}")

    def require_central(self, what: str) -> None:
        if not self.central:
            raise self.forbid(what)

    # -- workers ----------------------------------------------------------------------------

    def speaks_for(self, worker: str) -> bool:
        return self.central or fnmatchcase(worker, self.workers)

    def check_worker(self, worker: str, what: str) -> None:
        if not self.speaks_for(worker):
            raise self.forbid(f"{what} as worker {worker!r}")

    # -- queues -----------------------------------------------------------------------------

    def owns_pidbox(self, queue: str) -> bool:
        """Whether ``queue`` is the remote-control queue of one of this scope's workers."""
        if not queue.endswith(PIDBOX_SUFFIX) or queue.endswith(REPLY_SUFFIX):
            return False
        return self.speaks_for(queue[: -len(PIDBOX_SUFFIX)])

    @staticmethod
    def is_private(queue: str) -> bool:
        """Reply and event queues: they belong to the credential that declared them."""
        return queue.endswith(REPLY_SUFFIX) or queue.startswith(EVENT_PREFIX)

    def task_queue(self, queue: str) -> bool:
        return queue in self.queues or queue in self.publish

    def owner_for(self, queue: str) -> str | None:
        """The owner to record when this scope declares ``queue`` (None: not private)."""
        if self.central or not self.is_private(queue):
            return None
        return self.name

    def check_declare(self, queue: str) -> None:
        """Declare (or look up) task queues it may use, its remote-control queue, and
        private queues (the broker refuses one that another credential owns)."""
        if self.central or self.task_queue(queue) or self.owns_pidbox(queue):
            return
        if self.is_private(queue):
            return  # the broker refuses one that another credential owns
        raise self.forbid(f"declaring queue {queue!r}")

    def check_consume(self, queues: Iterable[str], owners: Mapping[str, str | None]) -> None:
        """Its task queues, its remote-control queue, and private queues it owns."""
        if self.central:
            return
        for queue in queues:
            if queue in self.queues or self.owns_pidbox(queue):
                continue
            if self.is_private(queue) and owners.get(queue) == self.name:
                continue
            raise self.forbid(f"consuming queue {queue!r}")

    def private_queues(self, queues: Iterable[str]) -> list[str]:
        """The queues whose owner :meth:`check_consume` needs."""
        if self.central:
            return []
        return [q for q in queues if q not in self.queues and self.is_private(q)]

    def owns(self, queue: str, owner: str | None) -> bool:
        return self.central or self.owns_pidbox(queue) or (
            self.is_private(queue) and owner == self.name)

    def check_owned(self, queue: str, owner: str | None, what: str) -> None:
        """Purge, delete, unbind: only queues it owns (central: any)."""
        if not self.owns(queue, owner):
            raise self.forbid(f"{what} queue {queue!r}, which it does not own")

    def check_bind(self, queue: str, exchange: str, routing_key: str,
                   owner: str | None) -> None:
        """Bindings Celery makes: a task queue under its own name, the remote-control queue
        to the control fanout, a reply queue under its oid, an event queue to worker events.
        Nothing that would copy another site's messages into its queues."""
        if self.central:
            return
        if self.task_queue(queue) and routing_key == queue and exchange not in (
                CONTROL_EXCHANGE, REPLY_EXCHANGE, EVENT_EXCHANGE):
            return
        if self.owns_pidbox(queue) and exchange == CONTROL_EXCHANGE:
            return
        if self.owns(queue, owner):
            if queue.endswith(REPLY_SUFFIX) and exchange == REPLY_EXCHANGE and (
                    routing_key == queue[: -len(REPLY_SUFFIX)]):
                return
            if queue.startswith(EVENT_PREFIX) and exchange == EVENT_EXCHANGE and (
                    routing_key.startswith("worker.")):
                return
        raise self.forbid(
            f"binding queue {queue!r} to exchange {exchange!r} with routing key {routing_key!r}"
        )

    # -- publishing -------------------------------------------------------------------------

    def check_publish(self, exchange: str, routing_key: str, targets: Iterable[str]) -> None:
        """Called by the broker with the queues a message would reach, before it is stored."""
        if self.central:
            return
        targets = list(targets)
        if exchange == CONTROL_EXCHANGE:
            raise self.forbid("broadcasting remote-control commands (celery control/inspect)")
        if exchange == REPLY_EXCHANGE:
            allowed = [q for q in targets if q.endswith(REPLY_SUFFIX)]
        elif exchange == EVENT_EXCHANGE:
            allowed = [q for q in targets if q.startswith(EVENT_PREFIX)]
        else:
            allowed = [q for q in targets if self.task_queue(q)]
        refused = sorted(set(targets) - set(allowed))
        if refused:
            raise self.forbid(
                f"publishing to exchange {exchange!r} with routing key {routing_key!r} "
                f"reaches queue(s) {refused}"
            )


def loads_list(text: str | None) -> list[str]:
    return list(json.loads(text)) if text else []
