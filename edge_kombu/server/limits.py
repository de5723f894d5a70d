"""Rate limits on failed credentials, with Flask-Limiter.

A request that presents a credential (an ``Authorization`` header) and is answered 401
counts as a failure:

* per source address, on every route but ``/api/v1/health`` (API tokens and JWTs, the pages'
  and ``/metrics``' Basic passwords): ``auth_failure_limit`` (default 10 per minute);
* per user name of the pages' (and ``/metrics``') Basic sign-in, from any address:
  ``login_failure_limit`` (default 5 per minute), against password guessing spread over
  many addresses.

Before a request is served its address (and its user name) is checked: once over the limit
every request from it is answered 429 with ``Retry-After``, **even one with a good
credential**: answering a right guess differently from a wrong one would let the guessing
go on. Other addresses and other user names are not affected. Failures are counted in a
moving window, so an address is served again as its old failures age out.

Counts live in ``rate_limit_storage``: ``memory://`` keeps them per process (``--workers N``
lets an address fail N times as often), a shared storage of the ``limits`` library (such as
``redis://host``) counts for all processes. The address is the TCP peer's, or, with
``trusted_proxies`` = N, the one the Nth reverse proxy put in ``X-Forwarded-For``
(werkzeug's ProxyFix).
"""

from __future__ import annotations

import math
import time

from flask import Flask, jsonify, request
from flask_limiter import ApplicationLimit, Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address
from werkzeug.middleware.proxy_fix import ProxyFix

from edge_kombu import errors
from edge_kombu.server.config import ServerConfig
from edge_kombu.server.web.access import basic_user_name

#: Routes answered whatever the address did (load balancers probe them).
UNLIMITED_ENDPOINTS = frozenset({"edge_api.health"})


def install(app: Flask, config: ServerConfig) -> Limiter | None:
    """Count failed credentials of ``app``'s requests and refuse addresses (and page users)
    over their limits; None if both limits are off."""
    if config.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=config.trusted_proxies)
    limits = []
    if config.auth_failure_limit != "off":
        limits.append(ApplicationLimit(
            config.auth_failure_limit,
            key_function=get_remote_address,
            scope="failed-credentials-per-address",
            exempt_when=lambda: request.endpoint in UNLIMITED_ENDPOINTS,
            deduct_when=credential_failed,
            error_message=lambda: f"too many failed credentials from {get_remote_address()}",
        ))
    if config.login_failure_limit != "off":
        limits.append(ApplicationLimit(
            config.login_failure_limit,
            key_function=lambda: basic_user_name() or "",
            scope="failed-sign-ins-per-user",
            exempt_when=lambda: not basic_user_name(),
            deduct_when=credential_failed,
            error_message=lambda: f"too many failed sign-ins as {basic_user_name()!r}",
        ))
    if not limits:
        return None
    limiter = Limiter(get_remote_address, app=app, application_limits=limits,
                      storage_uri=config.rate_limit_storage, strategy="moving-window",
                      key_prefix="edge-kombu")

    @app.errorhandler(RateLimitExceeded)
    def too_many(exc: RateLimitExceeded):
        breached = limiter.current_limit
        wait = math.ceil(breached.reset_at - time.time()) if breached else 60
        wait = max(1, wait)
        err = errors.TooManyRequests(
            f"{exc.description} (at most {exc.limit.limit}); retry in {wait} s")
        return jsonify(err.to_json()), err.status, {"Retry-After": str(wait)}

    return limiter


def credential_failed(response) -> bool:
    """A credential was presented and refused (a missing one, the pages' sign-in prompt,
    does not count)."""
    return response.status_code == 401 and "Authorization" in request.headers
