"""Settings of the edge API server, parsed once into a frozen object."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from edge_kombu.protocol import MAX_WAIT_SECONDS, MIN_SECRET_LENGTH

ENV_SECRET = "AIRFLOW__CORE__INTERNAL_API_SECRET_KEY"

#: Seconds a consumer session may stay silent before its leases are released.
DEFAULT_LEASE_TIMEOUT = 30.0
#: Longest a consume waits on the server before answering empty.
DEFAULT_MAX_WAIT = 10.0
#: Largest request body accepted (bytes).
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
#: How often expired sessions, messages, queues and results are cleaned up.
DEFAULT_REAP_INTERVAL = 1.0
#: Seconds without a heartbeat after which a worker is "unknown" and its leases are freed.
DEFAULT_WORKER_TIMEOUT = 30.0
#: Seconds after this process got its database back (or started) during which no worker or
#: session is expired for silence: long enough for every live one to heartbeat again. One
#: heartbeat interval of the workers (edge_kombu.worker.settings.DEFAULT_HEARTBEAT_INTERVAL,
#: not imported: the server does not depend on the worker side).
DEFAULT_OUTAGE_GRACE = 10.0
#: Seconds a task that needs more slots than a worker has free may wait before that
#: worker stops taking smaller tasks from behind it (so big tasks are not starved).
DEFAULT_STARVATION_GUARD = 2.0
#: Days a task log pushed by edge workers is kept after its last chunk.
DEFAULT_LOG_RETENTION_DAYS = 30.0
#: Without PostgreSQL NOTIFY: how often each process checks for messages published elsewhere.
DEFAULT_WAKE_POLL_INTERVAL = 0.2
#: Seconds during which a repeated publish (same Celery task id, retries and ETA, or the
#: same per-publish id of a client's resend) is recognised and stored once (0: never).
DEFAULT_PUBLISH_DEDUP_WINDOW = 300.0
#: Seconds a finished job stays in the jobs history (the Jobs page).
DEFAULT_JOB_RETENTION = 7 * 24 * 3600.0
#: Connections one server process serves at once (idle long-polls cost a greenlet each).
DEFAULT_MAX_CONNECTIONS = 10000
#: Connections one source address may hold open at once in one process (0: no cap).
DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 500
#: Seconds a request may take to arrive, headers and body, from its first byte.
DEFAULT_REQUEST_TIMEOUT = 30.0
#: Failed credentials (API and pages) one source address may send before it gets 429.
DEFAULT_AUTH_FAILURE_LIMIT = "10 per minute"
#: Failed sign-ins to the pages per user name (from any address) before that name gets 429.
DEFAULT_LOGIN_FAILURE_LIMIT = "5 per minute"
#: Who may read ``/metrics``: "basic" (the web pages' users) or "none" (anyone).
METRICS_AUTH_CHOICES = ("basic", "none")
#: Longest lifetime (exp - iat) of a shared-secret JWT the server accepts (clients mint 60 s).
DEFAULT_JWT_MAX_LIFETIME = 300.0
#: What a shared-secret JWT may do: everything (Airflow's edge executor), or the scope of
#: the worker entry naming its ``sub``.
SHARED_SECRET_SCOPES = ("central", "worker")


def _airflow_edge_option(name: str) -> str | None:
    """``[edge] <name>`` of Airflow's configuration, when Airflow is configured."""
    from edge_kombu.server.db import airflow_conf

    conf = airflow_conf()
    return (conf.get("edge", name, fallback=None) or None) if conf is not None else None


def env_or_edge(name: str, default: str | None = None) -> str | None:
    """``EDGE_KOMBU_<NAME>``, else Airflow's ``[edge] <name>``, else ``default``."""
    return os.environ.get(f"EDGE_KOMBU_{name.upper()}") or _airflow_edge_option(name) or default


def env_float(name: str, default: float) -> float:
    """The number in environment variable ``name``, or ``default`` if unset or empty."""
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def env_int(name: str, default: int) -> int:
    """The integer in environment variable ``name``, or ``default`` if unset or empty."""
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def check_rate_limit(name: str, value: str) -> None:
    """A rate limit such as ``10 per minute`` or ``5/second``, or ``off``."""
    from limits import parse_many

    if value == "off":
        return
    try:
        parse_many(value)
    except ValueError:
        raise ValueError(f"{name} must be a rate limit such as '10 per minute' or '5/second', "
                         f"or 'off'; got {value!r}") from None


def shared_secret_from_environment() -> str | None:
    """``[core] internal_api_secret_key``: from the environment, else Airflow's config."""
    secret = os.environ.get(ENV_SECRET)
    if secret:
        return secret
    from edge_kombu.server.db import airflow_conf

    conf = airflow_conf()
    if conf is None:
        return None
    return conf.get("core", "internal_api_secret_key", fallback=None) or None


def log_retention_days_default() -> float:
    """``[edge] log_retention_days`` when Airflow is configured, else the default."""
    from edge_kombu.server.db import airflow_conf

    conf = airflow_conf()
    raw = conf.get("edge", "log_retention_days", fallback=None) if conf is not None else None
    try:
        return float(raw) if raw else DEFAULT_LOG_RETENTION_DAYS
    except ValueError:
        raise ValueError(f"[edge] log_retention_days must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class ServerConfig:
    db_url: str
    secret_key: str | None = None
    lease_timeout: float = DEFAULT_LEASE_TIMEOUT
    max_wait: float = DEFAULT_MAX_WAIT
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    reap_interval: float = DEFAULT_REAP_INTERVAL
    wake_poll_interval: float = DEFAULT_WAKE_POLL_INTERVAL
    jwt_leeway: float = 10.0
    worker_timeout: float = DEFAULT_WORKER_TIMEOUT
    outage_grace: float = DEFAULT_OUTAGE_GRACE
    starvation_guard: float = DEFAULT_STARVATION_GUARD
    # Web pages: "user:password" of an admin (may act) and of a viewer (may look).
    ui_admin: str | None = field(default=None, repr=False)
    ui_viewer: str | None = field(default=None, repr=False)
    metrics_auth: str = "basic"
    job_retention: float = DEFAULT_JOB_RETENTION
    publish_dedup_window: float = DEFAULT_PUBLISH_DEDUP_WINDOW
    log_retention_days: float = DEFAULT_LOG_RETENTION_DAYS
    # Hostile clients (see connections.py and limits.py).
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_connections_per_address: int = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    auth_failure_limit: str = DEFAULT_AUTH_FAILURE_LIMIT
    login_failure_limit: str = DEFAULT_LOGIN_FAILURE_LIMIT
    trusted_proxies: int = 0  # reverse proxies in front whose X-Forwarded-For is believed
    rate_limit_storage: str = "memory://"  # where failures are counted (limits library URI)
    shared_secret_scope: str = "central"
    jwt_max_lifetime: float = DEFAULT_JWT_MAX_LIFETIME
    # OIDC workload identity: accepted when an issuer and an audience are set.
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks_url: str | None = None
    oidc_jwks_file: str | None = None
    oidc_worker_claim: str = "sub"

    def __post_init__(self) -> None:
        if self.secret_key is not None and len(self.secret_key) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"the shared secret ([core] internal_api_secret_key) must be at least "
                f"{MIN_SECRET_LENGTH} characters long"
            )
        if not 0 < self.max_wait <= MAX_WAIT_SECONDS:
            raise ValueError(f"max_wait must be in (0, {MAX_WAIT_SECONDS}] seconds")
        if self.lease_timeout <= self.max_wait * 1.5:
            raise ValueError(
                f"lease_timeout ({self.lease_timeout}s) must exceed 1.5 x max_wait "
                f"({self.max_wait}s): a consumer waiting on the server would lose its leases"
            )
        if self.max_body_bytes < 1024:
            raise ValueError("max_body_bytes must be at least 1024")
        for role, credential in (("ADMIN", self.ui_admin), ("VIEWER", self.ui_viewer)):
            user, sep, password = (credential or "").partition(":")
            if credential is not None and not (user and sep and password):
                raise ValueError(f"EDGE_KOMBU_UI_{role} must be user:password (both non-empty)")
        if self.metrics_auth not in METRICS_AUTH_CHOICES:
            raise ValueError(f"metrics_auth must be one of {', '.join(METRICS_AUTH_CHOICES)}, "
                             f"got {self.metrics_auth!r}")
        for name in ("reap_interval", "wake_poll_interval", "worker_timeout", "job_retention"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0 seconds")
        if self.outage_grace < 0:
            raise ValueError("EDGE_KOMBU_OUTAGE_GRACE must be >= 0 seconds")
        if not 0 <= self.publish_dedup_window <= 86400:
            raise ValueError("EDGE_KOMBU_PUBLISH_DEDUP_WINDOW must be 0 (off) to 86400 seconds")
        if self.log_retention_days <= 0:
            raise ValueError("log_retention_days must be > 0 days")
        if self.max_connections < 1:
            raise ValueError("EDGE_KOMBU_MAX_CONNECTIONS must be >= 1")
        if self.max_connections_per_address < 0:
            raise ValueError("EDGE_KOMBU_MAX_CONNECTIONS_PER_ADDRESS must be >= 0 (0: no cap)")
        if self.request_timeout <= 0:
            raise ValueError("EDGE_KOMBU_REQUEST_TIMEOUT must be > 0 seconds")
        if self.trusted_proxies < 0:
            raise ValueError("EDGE_KOMBU_TRUSTED_PROXIES must be >= 0")
        check_rate_limit("EDGE_KOMBU_AUTH_FAILURE_LIMIT", self.auth_failure_limit)
        check_rate_limit("EDGE_KOMBU_LOGIN_FAILURE_LIMIT", self.login_failure_limit)
        if self.shared_secret_scope not in SHARED_SECRET_SCOPES:
            raise ValueError(f"shared_secret_scope must be one of "
                             f"{', '.join(SHARED_SECRET_SCOPES)}, got {self.shared_secret_scope!r}")
        if not 0 < self.jwt_max_lifetime <= 3600:
            raise ValueError("jwt_max_lifetime must be in (0, 3600] seconds")
        if self.oidc_issuer or self.oidc_audience:
            if not (self.oidc_issuer and self.oidc_audience):
                raise ValueError("OIDC needs both an issuer and an audience "
                                 "(EDGE_KOMBU_OIDC_ISSUER, EDGE_KOMBU_OIDC_AUDIENCE)")
            if bool(self.oidc_jwks_url) == bool(self.oidc_jwks_file):
                raise ValueError("OIDC needs one of EDGE_KOMBU_OIDC_JWKS_URL or "
                                 "EDGE_KOMBU_OIDC_JWKS_FILE")

    @classmethod
    def from_environment(cls, db_url: str, **overrides) -> ServerConfig:
        """Settings from ``EDGE_KOMBU_*`` variables and the shared secret, then ``overrides``."""
        values = {
            "secret_key": shared_secret_from_environment(),
            "lease_timeout": env_float("EDGE_KOMBU_LEASE_TIMEOUT", DEFAULT_LEASE_TIMEOUT),
            "max_wait": env_float("EDGE_KOMBU_MAX_WAIT", DEFAULT_MAX_WAIT),
            "max_body_bytes": int(env_float("EDGE_KOMBU_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
            "reap_interval": env_float("EDGE_KOMBU_REAP_INTERVAL", DEFAULT_REAP_INTERVAL),
            "wake_poll_interval": env_float(
                "EDGE_KOMBU_WAKE_POLL_INTERVAL", DEFAULT_WAKE_POLL_INTERVAL
            ),
            "worker_timeout": env_float("EDGE_KOMBU_WORKER_TIMEOUT", DEFAULT_WORKER_TIMEOUT),
            "outage_grace": env_float("EDGE_KOMBU_OUTAGE_GRACE", DEFAULT_OUTAGE_GRACE),
            "starvation_guard": env_float(
                "EDGE_KOMBU_STARVATION_GUARD", DEFAULT_STARVATION_GUARD
            ),
            "ui_admin": os.environ.get("EDGE_KOMBU_UI_ADMIN") or None,
            "ui_viewer": os.environ.get("EDGE_KOMBU_UI_VIEWER") or None,
            "metrics_auth": os.environ.get("EDGE_KOMBU_METRICS_AUTH") or "basic",
            "job_retention": env_float("EDGE_KOMBU_JOB_RETENTION", DEFAULT_JOB_RETENTION),
            "publish_dedup_window": env_float(
                "EDGE_KOMBU_PUBLISH_DEDUP_WINDOW", DEFAULT_PUBLISH_DEDUP_WINDOW
            ),
            "log_retention_days": env_float(
                "EDGE_KOMBU_LOG_RETENTION_DAYS", log_retention_days_default()
            ),
            "max_connections": env_int("EDGE_KOMBU_MAX_CONNECTIONS", DEFAULT_MAX_CONNECTIONS),
            "max_connections_per_address": env_int(
                "EDGE_KOMBU_MAX_CONNECTIONS_PER_ADDRESS", DEFAULT_MAX_CONNECTIONS_PER_ADDRESS
            ),
            "request_timeout": env_float("EDGE_KOMBU_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT),
            "auth_failure_limit": os.environ.get("EDGE_KOMBU_AUTH_FAILURE_LIMIT")
            or DEFAULT_AUTH_FAILURE_LIMIT,
            "login_failure_limit": os.environ.get("EDGE_KOMBU_LOGIN_FAILURE_LIMIT")
            or DEFAULT_LOGIN_FAILURE_LIMIT,
            "trusted_proxies": env_int("EDGE_KOMBU_TRUSTED_PROXIES", 0),
            "rate_limit_storage": os.environ.get("EDGE_KOMBU_RATE_LIMIT_STORAGE") or "memory://",
            "shared_secret_scope": env_or_edge("shared_secret_scope", "central"),
            "jwt_max_lifetime": env_float("EDGE_KOMBU_JWT_MAX_LIFETIME", DEFAULT_JWT_MAX_LIFETIME),
            "oidc_issuer": env_or_edge("oidc_issuer"),
            "oidc_audience": env_or_edge("oidc_audience"),
            "oidc_jwks_url": env_or_edge("oidc_jwks_url"),
            "oidc_jwks_file": env_or_edge("oidc_jwks_file"),
            "oidc_worker_claim": env_or_edge("oidc_worker_claim", "sub"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(db_url=db_url, **values)
