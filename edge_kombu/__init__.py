"""edge-kombu: Celery over HTTPS for workers at remote sites.

Importing the package registers the ``edge`` kombu transport, so broker URLs of
the form ``edge+https://:TOKEN@host/prefix`` work in any Celery app. It also hooks the
Celery processes of any app into the transport through Celery's signals; the modules
that do it are imported only when a worker or Flower starts:

- a Celery worker (``worker_init``) gets the consumer step of
  :mod:`edge_kombu.worker.loop` (acks and control commands go out at once), and its API
  clients are named by its node name (``client_name``, unless set);
- Flower (its start-up sends ``import_modules``) reads queue lengths through the edge
  API (:mod:`edge_kombu.flower`).
"""

from __future__ import annotations

import sys

from edge_kombu.protocol import VERSION as __version__  # noqa: F401 - the package version


def _register_transport() -> None:
    from kombu.transport import TRANSPORT_ALIASES

    TRANSPORT_ALIASES.setdefault("edge", "edge_kombu.transport.kombu:Transport")


def _worker_starting(sender=None, **kwargs) -> None:
    from edge_kombu.worker.loop import add_step
    from edge_kombu.worker.startup import check_edge_broker

    add_step(sender)
    _name_clients(sender)
    if not getattr(sender.app, "edge_kombu_checks_start", False):
        check_edge_broker(sender)


def _name_clients(worker) -> None:
    """A worker's API clients go by its node name unless ``client_name`` is set: the
    ``sub`` of its shared-secret JWTs, which a worker-scoped server maps to its scope."""
    conf = worker.app.conf
    for key in ("broker_transport_options", "result_backend_transport_options"):
        options = dict(conf.get(key) or {})
        if "client_name" not in options:
            conf[key] = {**options, "client_name": worker.hostname}


def _modules_importing(sender=None, **kwargs) -> None:
    views = sys.modules.get("flower.views")  # loaded in a Flower process only
    if views is not None:
        from edge_kombu.flower import install

        install(views)


def _connect_celery() -> None:
    from celery import signals

    signals.worker_init.connect(_worker_starting, weak=False,
                                dispatch_uid="edge_kombu.worker.loop")
    signals.import_modules.connect(_modules_importing, weak=False,
                                   dispatch_uid="edge_kombu.flower")


_register_transport()
_connect_celery()
