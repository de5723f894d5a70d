"""A plain Celery worker over the edge transport that cannot start says why in one line.

Celery reports an error raised while its consumer connects as "Unrecoverable error"
with a long traceback whose last line is the message. Before that, at ``worker_init``,
this asks the API ``hello`` once: a rejected credential, a refused version or URL, or an
``https`` URL against a plain-HTTP server end the worker with one line on stderr and
exit code 1. An unreachable API does not: Celery retries the connection and says so on
one line per attempt, as with any broker. ``celery -A edge_kombu`` workers check this
and more in their own start (:mod:`edge_kombu.worker.bootstep`).
"""

from __future__ import annotations

from edge_kombu import errors
from edge_kombu.transport.client import client_for
from edge_kombu.transport.settings import ClientSettings

#: What no retry mends.
_FATAL = (errors.AuthenticationFailed, errors.Forbidden, errors.VersionMismatch,
          errors.InvalidRequest, errors.PlainHTTPAnswer)


def edge_api_url(broker_url: object) -> str | None:
    """The API URL of an ``edge+`` broker URL (the first of a failover list), else None."""
    url = broker_url[0] if isinstance(broker_url, (list, tuple)) and broker_url else broker_url
    if isinstance(url, str):
        url = url.split(";", 1)[0]
        if url.startswith("edge+"):
            return url[len("edge+"):]
    return None


def check_edge_broker(worker) -> None:
    """Raise SystemExit with one line if the edge API refuses ``worker``'s broker link."""
    app = worker.app
    url = edge_api_url(app.conf.broker_url)
    if url is None:
        return
    conf = app.conf
    try:
        settings = ClientSettings.from_kombu(url, conf.broker_transport_options,
                                             conf.broker_use_ssl)
        client = client_for(settings)
    except errors.EdgeError as exc:  # no credential at all, a malformed URL
        raise SystemExit(f"celery worker {worker.hostname}: {exc.message}") from None
    try:
        client.call("hello", retry=False)
    except errors.AuthenticationFailed as exc:
        raise SystemExit(f"celery worker {worker.hostname}: the edge API at {client.base_url} "
                         f"rejected the credential: {exc.message}") from None
    except _FATAL as exc:
        raise SystemExit(f"celery worker {worker.hostname}: the edge API at {client.base_url} "
                         f"refused: {exc.message}") from None
    except errors.EdgeError:
        pass  # unreachable or unavailable: Celery's connection retries report it
    finally:
        client.close()
