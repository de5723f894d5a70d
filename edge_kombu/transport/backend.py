"""Celery result backend ``edge+http(s)://[:TOKEN@]host[:port][/prefix]`` over the edge API.

A :class:`~celery.backends.base.KeyValueStoreBackend`: ``mget`` is one request
(Airflow's state sync reads all its tasks at once), ``incr`` is atomic on the
server so chords work, and results expire after ``result_expires`` on the server.
Storing a task's state is one request: Celery's rule that nothing overwrites a SUCCESS
(a lost task's late update) is kept by the server in the write's transaction
(``keep_success``) instead of a read before every write (JSON results; other
serializers, and servers older than it, keep Celery's read).

Options (``result_backend_transport_options``): ``token``, ``secret``,
``client_name``, ``read_timeout``, ``connect_retries``, as the transport's
(:class:`~edge_kombu.transport.settings.ClientSettings`). TLS comes from
``result_backend_transport_options['ssl']`` or else ``broker_use_ssl``. Storing and
reading a result retry while the API is unreachable (``result_backend_always_retry``
defaults to True here; ``result_backend_max_retries`` bounds it).
"""

from __future__ import annotations

import base64

from celery.backends.base import KeyValueStoreBackend
from kombu.utils.encoding import bytes_to_str
from kombu.utils.objects import cached_property

from edge_kombu import errors
from edge_kombu.transport.client import EdgeClient, call_without_new_fields, client_for
from edge_kombu.transport.settings import ClientSettings


def _decode(value) -> str | bytes | None:
    if isinstance(value, dict):
        return base64.b64decode(value["base64"])
    return value


class EdgeBackend(KeyValueStoreBackend):
    """Results stored by the edge API in its database."""

    key_t = str
    implements_incr = True
    supports_autoexpire = True
    supports_native_join = False

    def __init__(self, url: str | None = None, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not url:
            raise errors.InvalidRequest(
                "the edge result backend needs a URL: edge+https://[:TOKEN@]host[:port][/prefix]"
            )
        self.url = url
        self.expires = self.prepare_expires(kwargs.get("expires"), type=int)
        self._options = dict(self.app.conf.get("result_backend_transport_options") or {})
        # A result lost to a short outage of the API would turn a task that ran into a
        # failure: retry unreachable-API errors (Celery's backoff, up to
        # result_backend_max_retries, unbounded by default) unless the app chose otherwise.
        if "result_backend_always_retry" not in self.app.conf.changes:
            self.always_retry = True

    @cached_property
    def api(self) -> EdgeClient:
        options = self._options
        use_ssl = options.get("ssl") or self.app.conf.get("broker_use_ssl")
        return client_for(ClientSettings.from_kombu(self.url, options, use_ssl))

    def __reduce__(self, args=(), kwargs=None):
        return super().__reduce__(args, dict(kwargs or {}, url=self.url, expires=self.expires))

    def as_uri(self, include_password: bool = False) -> str:
        if include_password:
            return f"edge+{self.url}"
        from kombu.utils.url import maybe_sanitize_url

        return maybe_sanitize_url(f"edge+{self.url}")

    def exception_safe_to_retry(self, exc: Exception) -> bool:
        """Retry (``result_backend_always_retry``, on by default) when the API was
        unreachable or its database unavailable; storing and reading are idempotent."""
        return isinstance(exc, (errors.EdgeConnectionError, errors.ServiceUnavailable))

    def get(self, key):
        return _decode(self.api.call("results/get", {"key": key})["value"])

    def mget(self, keys):
        if not keys:
            return []
        return [_decode(v) for v in self.api.call("results/mget", {"keys": list(keys)})["values"]]

    def set(self, key, value, *, keep_success: bool = False) -> bool:
        """Store ``value``; with ``keep_success``, not over a stored SUCCESS. Returns
        whether the server stored it."""
        if isinstance(value, bytes):
            body = {"key": key, "value": base64.b64encode(value).decode(), "encoding": "base64"}
        else:
            body = {"key": key, "value": value}
        body["expires"] = self.expires or None
        if keep_success:
            body["keep_success"] = True
            answer = call_without_new_fields(self.api, "results/set", body, ("keep_success",))
            if "stored" not in answer:  # a server older than keep_success wrote it anyway
                self._server_keeps_success = False
        else:
            answer = self.api.call("results/set", body)
        return answer.get("stored", True)

    _server_keeps_success = True

    def _store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):
        # Celery's own reads the stored state first and keeps a SUCCESS; the server does
        # that in the write's transaction (one request, and no race between the two).
        if not (self._server_keeps_success and self.serializer == "json"):
            return super()._store_result(task_id, result, state, traceback=traceback,
                                         request=request, **kwargs)
        meta = self._get_result_meta(result=result, state=state, traceback=traceback,
                                     request=request)
        meta["task_id"] = bytes_to_str(task_id)
        self.set(self.get_key_for_task(task_id), self.encode(meta), keep_success=True)
        return result

    def delete(self, key):
        self.api.call("results/delete", {"key": key})

    def incr(self, key):
        return self.api.call("results/incr", {"key": key, "expires": self.expires or None})["value"]

    def expire(self, key, value):
        self.api.call("results/expire", {"key": key, "expires": value})
