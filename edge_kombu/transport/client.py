"""HTTP client of the edge API: authentication, TLS, retries and error mapping.

Worker side: imports neither Flask, SQLAlchemy nor Airflow. One
:class:`EdgeClient` is safe to share between threads (a long-poll in one thread,
acks from the pool's threads): it holds a pooled ``requests`` session and no
per-request state.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

import jwt
import requests
from requests.structures import CaseInsensitiveDict
from urllib3.util.retry import Retry

from edge_kombu import errors
from edge_kombu.protocol import (
    API_PATH,
    HEADER_CLIENT_NAME,
    HEADER_PROTOCOL,
    IDEMPOTENT_ROUTES,
    JWT_ALGORITHM,
    JWT_AUDIENCE,
    JWT_LIFETIME,
    JWT_ROUTE_CLAIM,
    MIN_SECRET_LENGTH,
    PROTOCOL_VERSION,
    jwt_signing_key,
)
from edge_kombu.transport.onesend import OneSendAdapter
from edge_kombu.transport.settings import (
    DEFAULT_CONNECT_RETRIES,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_POOL_SIZE,
    DEFAULT_READ_TIMEOUT,
    ENV_SECRET,
    ENV_TOKEN,
    ClientSettings,
    Endpoint,
)

#: Report another edge-kombu version than the installed one (compatibility testing).
ENV_REPORTED_VERSION = "EDGE_KOMBU_REPORTED_VERSION"


def reported_version() -> str:
    """The edge-kombu version this process announces to the server."""
    return os.environ.get(ENV_REPORTED_VERSION) or PROTOCOL_VERSION


class _DropRetryWarnings(logging.Filter):
    """urllib3 logs every connect retry as a warning; the client reports failures itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Retrying (")


logging.getLogger("urllib3.connectionpool").addFilter(_DropRetryWarnings())


class EdgeClient:
    """Calls the routes of :mod:`edge_kombu.protocol` and raises :mod:`edge_kombu.errors`.

    Takes its credential as given (or from the URL): the fallbacks to the environment
    are :class:`~edge_kombu.transport.settings.ClientSettings`' (see :func:`client_for`).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        token_file: str | None = None,
        secret: str | None = None,
        client_name: str | None = None,
        verify: bool | str = True,
        cert: str | tuple[str, str] | None = None,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        connect_retries: int = DEFAULT_CONNECT_RETRIES,
        pool_size: int = DEFAULT_POOL_SIZE,
    ) -> None:
        endpoint = Endpoint.parse(url)
        self.base_url = endpoint.base_url
        self._token_file = _TokenFile(token_file) if token_file else None
        self.token = token or endpoint.token or (
            self._token_file.read() if self._token_file else None) or None
        self.secret = None if self.token else (secret or None)
        if not self.token and not self.secret:
            raise errors.AuthenticationFailed(
                f"no credential for {self.base_url}: put a worker token in the URL "
                f"(edge+https://:TOKEN@host/...) or in {ENV_TOKEN}, or set the shared secret "
                f"{ENV_SECRET}"
            )
        if self.secret and len(self.secret) < MIN_SECRET_LENGTH:
            raise errors.AuthenticationFailed(
                f"the shared secret must be at least {MIN_SECRET_LENGTH} characters long"
            )
        self.client_name = client_name or socket.gethostname()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._jwt_cache: dict[str, tuple[str, float]] = {}
        self._jwt_lock = threading.Lock()
        self._http = requests.Session()
        self._http.verify = verify
        self._http.cert = cert
        self._http.trust_env = False
        retry = Retry(
            total=connect_retries,
            connect=connect_retries,
            read=0,
            status=0,
            other=0,
            allowed_methods=None,
            backoff_factor=0.2,
            backoff_max=2.0,
            backoff_jitter=0.2,
            raise_on_status=False,
        )
        self._adapter = OneSendAdapter(max_retries=retry, pool_connections=2,
                                       pool_maxsize=pool_size)
        self._http.mount("http://", self._adapter)
        self._http.mount("https://", self._adapter)
        self._urls: dict[str, str] = {}  # route -> its URL, prepared once
        self._http_once = requests.Session()
        self._http_once.verify, self._http_once.cert = verify, cert
        self._http_once.trust_env = False
        self._adapter_once = OneSendAdapter()  # requests' default: no retries
        self._http_once.mount("http://", self._adapter_once)
        self._http_once.mount("https://", self._adapter_once)
        self._headers = {
            "User-Agent": requests.utils.default_user_agent(),  # as requests sent it
            HEADER_PROTOCOL: reported_version(),
            HEADER_CLIENT_NAME: self.client_name,
            "Content-Type": "application/json",
        }

    def __repr__(self) -> str:  # never shows the credential
        return f"<EdgeClient {self.base_url}>"

    def _authorization(self, route: str) -> str:
        if self._token_file is not None:
            self.token = self._token_file.read() or self.token
        if self.token:
            return f"Bearer {self.token}"
        now = time.time()
        with self._jwt_lock:
            cached = self._jwt_cache.get(route)
            if cached and cached[1] - now > JWT_LIFETIME / 2:
                return f"Bearer {cached[0]}"
            claims = {
                "sub": self.client_name,
                "aud": JWT_AUDIENCE,
                "iat": int(now),
                "exp": int(now + JWT_LIFETIME),
                JWT_ROUTE_CLAIM: route,
            }
            token = jwt.encode(claims, jwt_signing_key(self.secret), algorithm=JWT_ALGORITHM)
            self._jwt_cache[route] = (token, now + JWT_LIFETIME)
            return f"Bearer {token}"

    def call(self, route: str, body: dict | None = None, *, timeout: float | None = None,
             retry: bool = True) -> dict:
        """POST ``body`` to ``route``; return the JSON answer or raise an EdgeError.

        ``retry=False`` makes one attempt only (for calls on the way out, when the
        server would clean up after us anyway).
        """
        request = self._request(route, body)
        # The session's adapter without the session's per-call work (merging settings,
        # cookies, hooks, redirects): none of it applies to the API.
        adapter = self._adapter if retry else self._adapter_once
        attempts = 2 if retry and route in IDEMPOTENT_ROUTES else 1
        for attempt in range(attempts):
            try:
                response = adapter.send(
                    request, timeout=(self.connect_timeout, timeout or self.read_timeout),
                    verify=self._http.verify, cert=self._http.cert, proxies={})
                response.content  # noqa: B018 - read the answer here, under these excepts
                break
            except requests.exceptions.SSLError as exc:
                raise self._tls_failure(route, exc) from exc
            except requests.ConnectionError as exc:
                if attempt + 1 < attempts:
                    continue  # e.g. a pooled connection the server had closed meanwhile
                # The cause in one line, not requests' and urllib3's chained tracebacks:
                # Celery logs a lost connection's exception whole, on every reconnect.
                raise errors.EdgeConnectionError(
                    f"cannot reach the edge API at {self.base_url} ({route}): {_root_cause(exc)}"
                ) from None
            except requests.RequestException as exc:
                raise errors.EdgeConnectionError(
                    f"cannot reach the edge API at {self.base_url} ({route}): {type(exc).__name__}"
                ) from exc
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code == 200 and isinstance(payload, dict):
            return payload
        if response.status_code == 200:
            raise errors.EdgeConnectionError(
                f"the edge API at {self.base_url} answered {route} with a non-JSON body; "
                "is the URL pointing at the edge API?"
            )
        raise errors.error_from_response(response.status_code, payload)

    def _request(self, route: str, body: dict | None) -> requests.PreparedRequest:
        """The POST of ``body`` (compact JSON) to ``route``."""
        try:
            data = json.dumps(body or {}, separators=(",", ":"), allow_nan=False).encode()
        except ValueError:  # NaN or infinity: refused as requests' own json= did
            raise errors.EdgeConnectionError(
                f"cannot reach the edge API at {self.base_url} ({route}): InvalidJSONError"
            ) from None
        request = requests.PreparedRequest()
        request.method = "POST"
        request.url = self._urls.get(route) or self._prepare_url(route)
        request.headers = CaseInsensitiveDict(self._headers)
        request.headers["Authorization"] = self._authorization(route)
        request.headers["Content-Length"] = str(len(data))
        request.body = data
        request.hooks = {"response": []}
        return request

    def _prepare_url(self, route: str) -> str:
        prepared = requests.PreparedRequest()
        prepared.prepare_url(f"{self.base_url}{API_PATH}/{route}", None)
        if len(self._urls) < 256:  # the routes are few; a caller's odd names are not kept
            self._urls[route] = prepared.url
        return prepared.url

    def download(self, route: str, params: dict, dest, *, max_bytes: int,
                 timeout: float | None = None) -> int:
        """GET ``route`` with ``params`` and write the body to the open file ``dest``;
        return its length. More than ``max_bytes`` raises PayloadTooLarge."""
        url = f"{self.base_url}{API_PATH}/{route}"
        headers = {k: v for k, v in self._headers.items() if k != "Content-Type"}
        headers["Authorization"] = self._authorization(route)
        try:
            with self._http.get(url, params=params, headers=headers, stream=True,
                                timeout=(self.connect_timeout, timeout or self.read_timeout)
                                ) as response:
                if response.status_code != 200:
                    try:
                        payload = response.json()
                    except ValueError:
                        payload = None
                    raise errors.error_from_response(response.status_code, payload)
                written = 0
                for chunk in response.iter_content(1 << 16):
                    written += len(chunk)
                    if written > max_bytes:
                        raise errors.PayloadTooLarge(
                            f"{route}: the answer exceeds {max_bytes} bytes")
                    dest.write(chunk)
                return written
        except requests.exceptions.SSLError as exc:
            raise self._tls_failure(route, exc) from exc
        except requests.RequestException as exc:
            raise errors.EdgeConnectionError(
                f"cannot reach the edge API at {self.base_url} ({route}): {type(exc).__name__}"
            ) from exc

    def _tls_failure(self, route: str, exc: Exception) -> errors.EdgeConnectionError:
        """A failed TLS handshake, said in a way that tells what to do: a server that
        speaks plain HTTP on that port gets the hint to drop the ``s``."""
        if self._answers_plain_http():
            plain = self.base_url.replace("https://", "http://", 1)
            return errors.PlainHTTPAnswer(
                f"the API answered plain HTTP: use edge+{plain} or serve TLS "
                f"(edge-kombu api --certfile/--keyfile)"
            )
        reason = " ".join(str(exc).split())
        return errors.EdgeConnectionError(
            f"TLS with the edge API at {self.base_url} failed ({route}): {reason}"
        )

    def _answers_plain_http(self) -> bool:
        if not self.base_url.startswith("https://"):
            return False
        try:
            self._http_once.get(f"{self.base_url.replace('https://', 'http://', 1)}"
                                f"{API_PATH}/health", timeout=self.connect_timeout)
        except requests.RequestException:
            return False
        return True  # any answer in plain HTTP on the TLS port

    def health(self) -> dict:
        try:
            response = self._http.get(
                f"{self.base_url}{API_PATH}/health",
                timeout=(self.connect_timeout, self.read_timeout),
            )
        except requests.RequestException as exc:
            raise errors.EdgeConnectionError(
                f"cannot reach the edge API at {self.base_url}: {type(exc).__name__}"
            ) from exc
        if response.status_code != 200:
            raise errors.EdgeConnectionError(
                f"edge API health check at {self.base_url} answered HTTP {response.status_code}"
            )
        return response.json()

    def close(self) -> None:
        self._http.close()
        self._http_once.close()


class _TokenFile:
    """A token kept in a file, read again when the file changes (rotated identity tokens)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple | None = None
        self._token: str | None = None
        self._lock = threading.Lock()

    def read(self) -> str | None:
        """The file's token; the last one read while the file is unreadable or empty."""
        try:
            stat = os.stat(self.path)
        except OSError:
            return self._token
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            if stamp != self._stamp:
                try:
                    with open(self.path, encoding="utf-8") as handle:
                        self._token = handle.read().strip() or self._token
                except OSError:
                    return self._token
                self._stamp = stamp
            return self._token


def call_without_new_fields(api, verb: str, body: dict, fields: tuple, **kwargs):
    """``api.call``; a server older than ``fields`` (it refuses them as unknown) gets the
    request again without them."""
    try:
        return api.call(verb, body, **kwargs)
    except errors.InvalidRequest as exc:
        dropped = [f for f in fields if f in body and repr(f) in exc.message]
        if not dropped:
            raise
        return api.call(verb, {k: v for k, v in body.items() if k not in dropped}, **kwargs)


def client_for(settings: ClientSettings) -> EdgeClient:
    """The client every worker-side user of the edge API gets: built from ``settings``."""
    return EdgeClient(
        settings.url,
        token=settings.token,
        token_file=settings.token_file,
        secret=settings.secret,
        client_name=settings.client_name,
        verify=settings.verify,
        cert=settings.cert,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        connect_retries=settings.connect_retries,
        pool_size=settings.pool_size,
    )


def _root_cause(exc: BaseException) -> str:
    """``Type: message`` of what lies under requests' and urllib3's wrappers of ``exc``."""
    seen = exc
    for _ in range(6):
        inner = getattr(seen, "reason", None)
        if not isinstance(inner, BaseException):
            inner = next((a for a in reversed(seen.args) if isinstance(a, BaseException)), None)
        if inner is None:
            break
        seen = inner
    text = " ".join(str(seen).split())[:200]
    return f"{type(seen).__name__}: {text}" if text else type(seen).__name__
