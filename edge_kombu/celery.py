"""The Celery app of edge workers: ``celery -A edge_kombu worker -Q remote [-c N] [-n NAME]``.

Configured from Airflow's settings, without importing Airflow, when its configuration is
first read (not at import; see :mod:`edge_kombu.worker.settings` for the lookup order:
environment, then airflow.cfg):

===============================================  ======================================
``[edge] api_url`` / ``AIRFLOW__EDGE__API_URL``  the edge API; broker and result backend
                                                 are ``edge+<api_url>``
``EDGE_KOMBU_TOKEN``                             a worker token, or
``EDGE_KOMBU_TOKEN_FILE`` / ``[edge] token_file``  a file holding it, or else
``[core] internal_api_secret_key``               the shared secret
``[edge] heartbeat_interval``                    seconds between heartbeats (10)
``[edge] worker_concurrency``                    the slot budget without ``-c``
``[edge] ca_bundle``, ``client_cert``,           TLS: CA to verify the API, client
``client_key``                                   certificate and key
``[operators] default_queue``                    ``task_default_queue`` (``default``)
``EDGE_KOMBU_INCLUDE``                           extra task modules, comma separated
``EDGE_KOMBU_RUN_DIR``                           control sockets (``$AIRFLOW_HOME/
                                                 edge_kombu/run``)
``[edge] push_logs``                             push Airflow task logs to the edge API
                                                 (True)
``[logging] base_log_folder``                    Airflow task logs on this host
                                                 (``$AIRFLOW_HOME/logs``)
===============================================  ======================================

The credential travels in the transport options, never in a URL Celery prints.
Anything missing is reported when a worker starts (one line, exit code 1), so
``celery -A edge_kombu edge status`` and other commands work without it. What the
command line or the code using the app sets (``app.conf...``) wins over these.
"""

from __future__ import annotations

import os

from celery import Celery

from edge_kombu.airflow.worker.workload import register as register_airflow_tasks
from edge_kombu.worker.bootstep import install
from edge_kombu.worker.settings import WorkerSettings, current

#: Slot pools: on child processes where the platform can fork, else on threads (Windows).
POOL = ("edge_kombu.worker.pool:SlotPool" if hasattr(os, "fork")
        else "edge_kombu.worker.pool:ThreadSlotPool")


def celery_settings(settings: WorkerSettings) -> dict:
    """The Celery settings of an edge worker with ``settings``."""
    edge_url = f"edge+{settings.api_url}" if settings.api_url else None
    transport_options = settings.credential.transport_options()
    return dict(
        broker_url=edge_url,
        result_backend=edge_url,
        broker_transport_options=dict(transport_options),
        result_backend_transport_options=dict(transport_options),
        broker_use_ssl=dict(settings.ssl) if settings.ssl else None,
        worker_pool=POOL,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_track_started=True,
        task_default_queue=settings.default_queue,
        worker_send_task_events=False,
        # An edge site's link may be down for a while: keep reconnecting, never give up.
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # A lost connection must not kill running tasks: their messages stay leased until
        # the server hears from this worker again (or gives up on it).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        include=list(settings.includes),
        # -c wins; Celery's default (the CPU count) without either.
        worker_concurrency=settings.worker_concurrency,
    )


def configure(sender: Celery, **kwargs) -> None:
    """Fill the app's configuration from :func:`~edge_kombu.worker.settings.current` as it
    is first read (Celery's ``on_configure``), leaving what was set already."""
    conf = sender.conf  # still pending: writes go to the app's own changes
    for key, value in celery_settings(current()).items():
        if key not in conf.changes:
            conf[key] = value


app = Celery("edge_kombu")
app.on_configure.connect(configure, sender=app, weak=False)
install(app)
register_airflow_tasks(app)  # execute_workload, when Airflow is installed
