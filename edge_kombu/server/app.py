"""Flask application factory of the edge API."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flask import Flask, jsonify, request
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from edge_kombu import errors
from edge_kombu.server import metrics
from edge_kombu.server.api import SessionTouches, bp
from edge_kombu.server.auth import Authenticator
from edge_kombu.server.config import ServerConfig
from edge_kombu.server.db import create_db_engine, describe
from edge_kombu.server.logs import TaskLogs
from edge_kombu.server.store import Store
from edge_kombu.server.wakeup import (
    LocalWakeup,
    PostgresListener,
    PostgresWakeup,
    ReadyPoller,
    Reaper,
    WaiterRegistry,
)
from edge_kombu.server.web.access import BasicAccess, NotSignedIn
from edge_kombu.server.web.views import bp as web_bp
from edge_kombu.server.workers import WorkerRegistry

log = logging.getLogger(__name__)


@dataclass
class Broker:
    """Everything the routes need, kept in ``app.extensions['edge_kombu']``."""

    config: ServerConfig
    store: Store
    registry: WaiterRegistry
    auth: Authenticator
    sessions: SessionTouches
    workers: WorkerRegistry
    logs: TaskLogs
    threads: list = field(default_factory=list)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        for thread in self.threads:
            thread.stop()


def build_broker(config: ServerConfig) -> Broker:
    engine = create_db_engine(config.db_url)
    registry = WaiterRegistry()
    postgres = engine.dialect.name == "postgresql"
    wakeup = PostgresWakeup(registry) if postgres else LocalWakeup(registry)
    store = Store(engine, lease_timeout=config.lease_timeout, wakeup=wakeup,
                  starvation_guard=config.starvation_guard)
    workers = WorkerRegistry(store, worker_timeout=config.worker_timeout)
    logs = TaskLogs(store, retention_days=config.log_retention_days)
    threads = [Reaper(store, workers, config.reap_interval, logs=logs,
                      job_retention=config.job_retention)]
    if postgres:
        threads.append(PostgresListener(engine, registry, origin=wakeup.origin))
    else:
        threads.append(ReadyPoller(store, registry, config.wake_poll_interval))
    return Broker(
        config=config,
        store=store,
        registry=registry,
        auth=Authenticator(store, config.secret_key, leeway=config.jwt_leeway),
        sessions=SessionTouches(store, interval=config.lease_timeout / 4),
        workers=workers,
        logs=logs,
        threads=threads,
    )


def create_app(config: ServerConfig, *, start_background: bool = True,
               access=None) -> Flask:
    """Create the API app; ``start_background`` starts the reaper and wake-up threads.

    ``access`` decides who sees the web pages (default: the configured admin/viewer).
    """
    app = Flask("edge_kombu")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False
    broker = build_broker(config)
    app.extensions["edge_kombu"] = broker
    app.extensions["edge_kombu_access"] = access or BasicAccess(config.ui_admin, config.ui_viewer)
    app.register_blueprint(bp)
    app.register_blueprint(web_bp)
    metrics.install(app, broker)
    _register_error_handlers(app, config)
    if start_background:
        broker.start()
    log.info("edge API on %s", describe(config.db_url))
    return app


def _register_error_handlers(app: Flask, config: ServerConfig) -> None:
    @app.errorhandler(NotSignedIn)
    def not_signed_in(exc: NotSignedIn):
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

    @app.errorhandler(sa_exc.OperationalError)
    @app.errorhandler(sa_exc.InterfaceError)
    def database_down(exc):
        log.error("database unavailable: %s", exc.__class__.__name__, exc_info=exc)
        err = errors.ServiceUnavailable("database unavailable; retry later")
        return jsonify(err.to_json()), err.status

    @app.errorhandler(Exception)
    def internal(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify({"error": "internal_error", "message": "internal server error"}), 500
