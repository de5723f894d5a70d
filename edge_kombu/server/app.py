"""Flask application factory of the edge API."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field

from flask import Flask, Request, jsonify, redirect, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream, get_input_stream

from edge_kombu import errors
from edge_kombu.server import limits, metrics
from edge_kombu.server.api import bp
from edge_kombu.server.audit import AuditLog
from edge_kombu.server.auth import Authenticator, OIDCSettings
from edge_kombu.server.broker import Broker
from edge_kombu.server.bundles import BundleSource, BundleStore, FolderBundles
from edge_kombu.server.config import ServerConfig
from edge_kombu.server.credential_cache import (
    ChangeWatch,
    CountedFreshness,
    CredentialCache,
)
from edge_kombu.server.credentials import Credentials
from edge_kombu.server.db import describe
from edge_kombu.server.grants import TaskGrants
from edge_kombu.server.housekeeping import Housekeeping, IntervalScheduler
from edge_kombu.server.jobs import JobHistory
from edge_kombu.server.logs import TaskLogs
from edge_kombu.server.manage import bp as manage_bp
from edge_kombu.server.outages import DATABASE_DOWN, Outages
from edge_kombu.server.results import Results
from edge_kombu.server.revocations import ExpiredTasks
from edge_kombu.server.sql import SQL
from edge_kombu.server.validation import RequestJSON
from edge_kombu.server.wakeup import (
    LocalWakeup,
    PostgresListener,
    PostgresWakeup,
    ReadyPoller,
    WaiterRegistry,
)
from edge_kombu.server.web.access import BasicAccess, NotSignedIn
from edge_kombu.server.web.views import bp as web_bp
from edge_kombu.server.workers import WorkerRegistry

log = logging.getLogger(__name__)


@dataclass
class Services:
    """The services over one SQL kernel, kept in ``app.extensions['edge_kombu']``."""

    config: ServerConfig
    sql: SQL
    waiters: WaiterRegistry
    auth: Authenticator
    broker: Broker
    results: Results
    credentials: Credentials
    grants: TaskGrants
    workers: WorkerRegistry
    audit: AuditLog
    jobs: JobHistory
    logs: TaskLogs
    outages: Outages
    housekeeping: Housekeeping
    threads: list = field(default_factory=list)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        for thread in self.threads:
            thread.stop()

    def shutdown(self) -> None:
        """Answer waiting long-polls now, stop the background threads, close the pool."""
        self.waiters.close()
        self.stop()
        self.sql.dispose()


def build_services(config: ServerConfig) -> Services:
    """Wire the services: one kernel, the wake-ups that suit its database, the threads."""
    waiters = WaiterRegistry()
    sql = SQL.from_url(config.db_url)
    # Other processes hear of commits through NOTIFY where the database has it, else they poll.
    wakeup = PostgresWakeup(waiters) if sql.notifies else LocalWakeup(waiters)
    sql.wakeup = wakeup
    jobs = JobHistory(sql)
    grants = TaskGrants(sql)
    results = Results(sql, history=jobs)
    broker = Broker(sql, lease_timeout=config.lease_timeout, max_wait=config.max_wait,
                    starvation_guard=config.starvation_guard, waiters=waiters, history=jobs,
                    grants=grants, dedup_window=config.publish_dedup_window,
                    expired=ExpiredTasks(results))
    audit = AuditLog(sql)
    listener = PostgresListener(sql.engine, waiters, origin=wakeup.origin) if sql.notifies \
        else None
    # Credentials come from memory while their generation is unchanged (one tiny read per
    # lookup, microseconds on SQLite): a NOTIFY could reach us after the next request.
    freshness = CountedFreshness(sql)
    credentials = Credentials(sql, audit=audit, cache=CredentialCache(freshness))
    workers = WorkerRegistry(sql, broker=broker, jobs=jobs, audit=audit,
                             worker_timeout=config.worker_timeout)
    logs = TaskLogs(sql, retention_days=config.log_retention_days)
    outages = Outages(config.outage_grace, clock=sql.clock)
    housekeeping = Housekeeping(sql, broker=broker, results=results, workers=workers, jobs=jobs,
                                logs=logs, job_retention=config.job_retention, outages=outages,
                                on_expired=metrics.record_reap)
    threads = [housekeeping.reaper(config.reap_interval)]
    # A change to a credential wakes the waiting long-polls to check theirs.
    if listener is not None:
        listener.on_credentials = waiters.recheck_all
        broker.hearing = listener.listening.is_set  # a deaf process knows too little
        threads.append(listener)
    else:
        poller = ReadyPoller(broker, waiters)
        watch = ChangeWatch(freshness, waiters.recheck_all)
        threads.append(IntervalScheduler("edge-kombu-ready-poller", tick=config.wake_poll_interval)
                       .every(0, "wake waiters", poller.poll)
                       .every(0, "re-check credentials", watch.poll))
    return Services(
        config=config,
        sql=sql,
        waiters=waiters,
        auth=_authenticator(config, credentials),
        broker=broker,
        results=results,
        credentials=credentials,
        grants=grants,
        workers=workers,
        audit=audit,
        jobs=jobs,
        logs=logs,
        outages=outages,
        housekeeping=housekeeping,
        threads=threads,
    )


class BoundedRequest(Request):
    """A request whose body is refused with 413 beyond the limit, with or without
    Content-Length.

    Without Content-Length (chunked), werkzeug stops reading at ``MAX_CONTENT_LENGTH`` and
    hands on what it read: a truncated body. Reading one byte more tells a body at the
    limit from one beyond it.
    """

    @cached_property
    def stream(self):
        limit = self.max_content_length
        if (limit is None or self.content_length is not None
                or "wsgi.input_terminated" not in self.environ):
            return get_input_stream(self.environ, max_content_length=limit)
        body = LimitedStream(self.environ["wsgi.input"], limit + 1, is_max=True).readall()
        if len(body) > limit:
            raise RequestEntityTooLarge()
        return io.BytesIO(body)


def _authenticator(config: ServerConfig, credentials: Credentials) -> Authenticator:
    oidc = None
    if config.oidc_issuer:
        oidc = OIDCSettings(config.oidc_issuer, config.oidc_audience, config.oidc_jwks_url,
                            config.oidc_jwks_file, config.oidc_worker_claim)
    return Authenticator(credentials, config.secret_key, leeway=config.jwt_leeway,
                         jwt_max_lifetime=config.jwt_max_lifetime,
                         shared_secret_scope=config.shared_secret_scope, oidc=oidc)


def create_app(config: ServerConfig, *, start_background: bool = True,
               access=None, bundles: BundleSource | None = None) -> Flask:
    """Create the API app; ``start_background`` starts the reaper and wake-up threads.

    ``access`` decides who sees the web pages (default: the configured admin/viewer).
    ``bundles`` is where DAG bundles come from (default: ``EDGE_KOMBU_BUNDLE_FOLDERS``).
    """
    app = Flask("edge_kombu")
    app.request_class = BoundedRequest
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json = RequestJSON(app)
    app.json.sort_keys = False
    services = build_services(config)
    app.extensions["edge_kombu"] = services
    app.extensions["edge_kombu_access"] = access or BasicAccess(config.ui_admin, config.ui_viewer)
    app.extensions["edge_kombu_bundles"] = BundleStore.from_environment(
        bundles if bundles is not None else FolderBundles.from_environment())
    app.register_blueprint(bp)
    app.register_blueprint(manage_bp)
    app.register_blueprint(web_bp)
    metrics.install(app, services)
    limits.install(app, config)
    _register_error_handlers(app, config)
    if start_background:
        services.start()
    log.info("edge API on %s", describe(config.db_url))
    return app


def _register_error_handlers(app: Flask, config: ServerConfig) -> None:
    @app.before_request
    def no_nul_in_url():
        # Path parts and query parameters reach text columns (a worker's name in a page
        # action, the jobs page's filters); PostgreSQL refuses NUL in text.
        if "\x00" in request.path:
            raise errors.InvalidRequest("the URL path must not contain the NUL character")
        for name, value in request.args.items(multi=True):
            if "\x00" in name or "\x00" in value:
                raise errors.InvalidRequest(
                    f"query parameter {name.replace(chr(0), '')[:64]!r} must not contain "
                    "the NUL character")

    @app.errorhandler(NotSignedIn)
    def not_signed_in(exc: NotSignedIn):
        if (exc.login_url and request.method == "GET"
                and any(kind == "text/html" for kind, _ in request.accept_mimetypes)):
            return redirect(exc.login_url)  # a browser: to the sign-in page, then back
        return jsonify({"error": "unauthorized" if exc.status == 401 else "forbidden",
                        "message": exc.message}), exc.status, exc.headers

    @app.errorhandler(errors.EdgeError)
    def edge_error(exc: errors.EdgeError):
        return jsonify(exc.to_json()), exc.status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc):
        err = errors.PayloadTooLarge(
            f"request body exceeds the limit of {config.max_body_bytes} bytes "
            "(server option --max-body-bytes / EDGE_KOMBU_MAX_BODY_BYTES)"
        )
        return jsonify(err.to_json()), err.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 404:
            message = f"no route {request.method} {request.path}"
        elif exc.code == 405:
            message = f"method {request.method} not allowed on {request.path}"
        else:
            message = exc.description or exc.name
        body = {"error": exc.name.lower().replace(" ", "_"), "message": message}
        # Keep the exception's own headers (Allow on a 405), not its HTML content type.
        headers = [(k, v) for k, v in exc.get_headers() if k.lower() != "content-type"]
        return jsonify(body), exc.code, headers

    def database_down(exc):
        # Heartbeats and session touches are lost meanwhile: the reaper must not hold the
        # silence against the workers (see outages.py).
        app.extensions["edge_kombu"].outages.failed()
        log.error("database unavailable: %s", exc.__class__.__name__, exc_info=exc)
        err = errors.ServiceUnavailable("database unavailable; retry later")
        return jsonify(err.to_json()), err.status

    for error in DATABASE_DOWN:
        app.register_error_handler(error, database_down)

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify({"error": "internal_error", "message": "internal server error"}), 500
