"""The Celery app of the EdgeExecutor, built from Airflow's configuration.

Broker and result backend are ``edge+<[edge] api_url>``. The credential, in the order
the edge workers look for it (:func:`~edge_kombu.transport.settings.find_credential`):
``EDGE_KOMBU_TOKEN``, a token file (``EDGE_KOMBU_TOKEN_FILE`` or ``[edge] token_file``),
the shared secret ``[core] internal_api_secret_key``. TLS: ``[edge] ca_bundle``,
``client_cert``, ``client_key``. It travels in the transport options, never in a URL
Celery prints.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery import Celery

from edge_kombu.transport.settings import ENV_TOKEN, find_credential, ssl_options

APP_NAME = "edge_kombu.airflow"
#: Seconds the EdgeExecutor gives one publish (``[edge] publish_timeout``): an HTTP round
#: trip over a WAN to a busy API, and the transport's resend after a lost answer, fit in it.
DEFAULT_PUBLISH_TIMEOUT = 10.0


class EdgeConfigError(ValueError):
    """The ``[edge]`` configuration cannot work; the message says what to set."""


def _get(conf: Any, section: str, key: str) -> str | None:
    value = conf.get(section, key, fallback=None)
    return value.strip() if isinstance(value, str) and value.strip() else None


def api_url(conf: Any) -> str:
    url = _get(conf, "edge", "api_url")
    if not url:
        raise EdgeConfigError(
            "[edge] api_url is not set (AIRFLOW__EDGE__API_URL): the EdgeExecutor publishes "
            "to the edge API there, e.g. https://airflow.example.com/edge/"
        )
    if not url.startswith(("http://", "https://")):
        raise EdgeConfigError(f"[edge] api_url must start with http:// or https://, got {url!r}")
    return url.rstrip("/")


def credential_options(conf: Any) -> dict[str, str]:
    """``{"token": ...}`` or ``{"secret": ...}`` for the transport and the result backend."""
    credential = find_credential(partial(_get, conf))
    if credential.problem:
        raise EdgeConfigError(credential.problem)
    options = credential.transport_options()
    if not options:
        raise EdgeConfigError(
            "no credential for the edge API: set [core] internal_api_secret_key (shared with "
            f"the edge API), [edge] token_file or {ENV_TOKEN}"
        )
    return options


def publish_timeout(conf: Any) -> float:
    """``[edge] publish_timeout``: seconds one publish of the EdgeExecutor may take."""
    raw = _get(conf, "edge", "publish_timeout")
    if raw is None:
        return DEFAULT_PUBLISH_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds <= 300:
        raise EdgeConfigError(f"[edge] publish_timeout must be a number of seconds in (0, 300], "
                              f"got {raw!r}")
    return seconds


def celery_config(conf: Any) -> dict[str, Any]:
    """Celery settings of the executor's app (the same task settings as the workers')."""
    url = f"edge+{api_url(conf)}"
    credential = credential_options(conf)
    return {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": dict(credential),
        "result_backend_transport_options": dict(credential),
        "broker_use_ssl": ssl_options(partial(_get, conf)),
        "broker_connection_retry_on_startup": True,
        "accept_content": ["json"],
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "task_acks_late": True,
        "task_track_started": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": _get(conf, "operators", "default_queue") or "default",
    }


def create_celery_app(conf: Any) -> Celery:
    """A Celery app publishing to and reading results from the edge API."""
    app = Celery(APP_NAME, set_as_current=False)
    app.conf.update(celery_config(conf))
    return app
