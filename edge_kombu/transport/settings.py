"""How to reach the edge API: one frozen :class:`ClientSettings`, read once, for every client.

Every worker-side user of the API (the kombu transport, the result backend, the worker
lifecycle, the log pusher, the Airflow refusal) builds its
:class:`~edge_kombu.transport.client.EdgeClient` with
:func:`~edge_kombu.transport.client.client_for` from a :class:`ClientSettings`, made
with :meth:`ClientSettings.from_kombu` from what kombu and Celery hold: the API's URL,
the transport options (``token``, ``token_file``, ``secret``, ``client_name``,
``read_timeout``, ``connect_retries``) and the ``ssl`` setting (``broker_use_ssl``).
A token from a file is read again whenever the file changes (an OIDC identity token that
Kubernetes or a cloud agent rotates).

Credential of a connection, first found wins: the ``token`` option, a token in the URL
(``edge+https://:TOKEN@host/...``), ``EDGE_KOMBU_TOKEN``; else the ``secret`` option or
``AIRFLOW__CORE__INTERNAL_API_SECRET_KEY``.

The edge workers' Celery app and the EdgeExecutor fill those transport options from
Airflow-style settings with :func:`find_credential` and :func:`ssl_options`, each given
its own option reader (``airflow.cfg`` read with configparser on a worker, Airflow's
``conf`` at the central site). Stdlib only.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

#: A worker token (``ekt_...``), as the environment gives it.
ENV_TOKEN = "EDGE_KOMBU_TOKEN"
#: A file holding the worker token (or ``[edge] token_file``).
ENV_TOKEN_FILE = "EDGE_KOMBU_TOKEN_FILE"
#: The shared secret, as Airflow's ``[core] internal_api_secret_key`` in the environment.
ENV_SECRET = "AIRFLOW__CORE__INTERNAL_API_SECRET_KEY"

#: Seconds to establish a TCP/TLS connection.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Seconds to wait for an answer (long-polls add their wait to this).
DEFAULT_READ_TIMEOUT = 30.0
#: Retries of requests that could not connect (safe to repeat: nothing was sent).
DEFAULT_CONNECT_RETRIES = 3
#: Pooled HTTP connections kept per client (a long-poll plus the pool threads' acks).
DEFAULT_POOL_SIZE = 16

#: ``(section, key) -> value or None``: how a caller reads Airflow-style options.
OptionReader = Callable[[str, str], "str | None"]


@dataclass(frozen=True)
class Endpoint:
    """Where the API is, and the credential embedded in its URL (if any)."""

    base_url: str
    token: str | None

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Split ``http(s)://[:TOKEN@]host[:port][/prefix]`` into base URL and token."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"edge API URL must look like https://host[:port][/prefix], got scheme "
                f"{parts.scheme!r}"
            )
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        if parts.port:
            netloc += f":{parts.port}"
        base = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        token = unquote(parts.password) if parts.password else None
        return cls(base, token)


def requests_tls(use_ssl: object) -> tuple[bool | str, str | tuple[str, str] | None]:
    """``requests``' ``verify`` and ``cert`` from kombu's ``ssl`` (``broker_use_ssl``) dict.

    ``ca_certs`` verifies the server with that CA bundle, ``cert_reqs=ssl.CERT_NONE``
    turns verification off, ``certfile`` (and ``keyfile``) is the client certificate.
    """
    if not isinstance(use_ssl, Mapping):
        return True, None
    verify: bool | str = True
    if use_ssl.get("cert_reqs") == ssl.CERT_NONE:
        verify = False
    elif use_ssl.get("ca_certs"):
        verify = use_ssl["ca_certs"]
    cert = None
    if use_ssl.get("certfile"):
        cert = use_ssl["certfile"]
        if use_ssl.get("keyfile"):
            cert = (use_ssl["certfile"], use_ssl["keyfile"])
    return verify, cert


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """Everything an :class:`~edge_kombu.transport.client.EdgeClient` is built from."""

    url: str = field(repr=False)  # may carry a token
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    secret: str | None = field(default=None, repr=False)
    client_name: str | None = None
    verify: bool | str = True
    cert: str | tuple[str, str] | None = None
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_READ_TIMEOUT
    connect_retries: int = DEFAULT_CONNECT_RETRIES
    pool_size: int = DEFAULT_POOL_SIZE

    def __post_init__(self) -> None:
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ValueError("the edge API's connect_timeout and read_timeout must be > 0")
        if self.connect_retries < 0:
            raise ValueError("the edge API's connect_retries must be >= 0")
        if self.pool_size < 1:
            raise ValueError("the edge API client's pool_size must be >= 1")

    @classmethod
    def from_kombu(cls, url: str, options: Mapping | None, use_ssl: object = None, *,
                   connect_timeout: float | None = None,
                   env: Mapping[str, str] | None = None) -> ClientSettings:
        """From a connection's API URL, transport options and ``ssl`` setting; the
        credential falls back to the environment (see the module docstring)."""
        options = options or {}
        env = os.environ if env is None else env
        verify, cert = requests_tls(use_ssl)
        token = options.get("token") or Endpoint.parse(url).token or env.get(ENV_TOKEN) or None
        token_file = options.get("token_file") or None
        secret = None if token or token_file else (
            options.get("secret") or env.get(ENV_SECRET) or None)
        return cls(
            url=url, token=token, token_file=token_file, secret=secret,
            client_name=options.get("client_name"),
            verify=verify, cert=cert,
            connect_timeout=connect_timeout or DEFAULT_CONNECT_TIMEOUT,
            read_timeout=float(options.get("read_timeout", DEFAULT_READ_TIMEOUT)),
            connect_retries=int(options.get("connect_retries", DEFAULT_CONNECT_RETRIES)),
        )


@dataclass(frozen=True, kw_only=True)
class Credential:
    """The credential Airflow-style settings name, and where it was found."""

    token: str | None = field(default=None, repr=False)
    secret: str | None = field(default=None, repr=False)
    #: The file the token was read from (read again when it changes).
    token_file: str | None = None
    #: Where it was found, for messages (``EDGE_KOMBU_TOKEN``, ``[edge] token_file PATH``,
    #: ...); empty when nothing is configured.
    source: str = ""
    #: Why the configured credential cannot be used (an unreadable or empty token file).
    problem: str | None = None

    def transport_options(self) -> dict[str, str]:
        """``{"token": ...}`` (with ``token_file``), ``{"secret": ...}`` or ``{}``, for the
        transport options."""
        if self.token and self.token_file:
            return {"token": self.token, "token_file": self.token_file}
        if self.token:
            return {"token": self.token}
        if self.secret:
            return {"secret": self.secret}
        return {}


def find_credential(option: OptionReader, env: Mapping[str, str] | None = None) -> Credential:
    """The credential, in this order: ``EDGE_KOMBU_TOKEN``; a token file
    (``EDGE_KOMBU_TOKEN_FILE`` or ``[edge] token_file``); the shared secret
    ``[core] internal_api_secret_key``. An unusable token file stops the search."""
    env = os.environ if env is None else env
    token = env.get(ENV_TOKEN, "").strip()
    if token:
        return Credential(token=token, source=ENV_TOKEN)
    named = env.get(ENV_TOKEN_FILE)
    token_file = named or option("edge", "token_file")
    if token_file:
        path = Path(token_file).expanduser()
        source = f"{ENV_TOKEN_FILE} {path}" if named else f"[edge] token_file {path}"
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            return Credential(source=source, problem=f"{source}: {exc.strerror}")
        if not token:
            return Credential(source=source, problem=f"{source} is empty")
        return Credential(token=token, source=source, token_file=str(path))
    secret = option("core", "internal_api_secret_key")
    if secret:
        return Credential(secret=secret, source="[core] internal_api_secret_key")
    return Credential()


def ssl_options(option: OptionReader) -> dict[str, str] | None:
    """kombu's ``ssl`` dict (``broker_use_ssl``) from ``[edge] ca_bundle``, ``client_cert``
    and ``client_key``; None when none is set."""
    ca, cert, key = (option("edge", name) for name in ("ca_bundle", "client_cert", "client_key"))
    options = {name: value for name, value in
               (("ca_certs", ca), ("certfile", cert), ("keyfile", key)) if value}
    return options or None
