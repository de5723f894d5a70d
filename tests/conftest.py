"""Fixtures: a migrated database per test (SQLite, PostgreSQL or MariaDB), real API
servers, worker tokens and real Celery workers.

``EDGE_KOMBU_TEST_DB`` picks the database: ``sqlite`` (default) or a SQLAlchemy URL.
A database server that cannot be reached skips the tests locally and fails them in CI.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from edge_kombu.server import models
from edge_kombu.server.db import create_db_engine, migrate
from edge_kombu.server.store import Store
from tests.helpers import APIServer, CeleryWorker

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only: runs only against the embedded SQLite default")
    config.addinivalue_line("markers", "postgres: needs PostgreSQL whatever EDGE_KOMBU_TEST_DB is")


def _unreachable(url: str, exc: Exception):
    message = f"database {url} unreachable: {type(exc).__name__}: {exc}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def _reset(engine) -> None:
    """Empty every edge table (faster than dropping and migrating per test)."""
    with engine.begin() as conn:
        for table in reversed(models.metadata.sorted_tables):
            conn.execute(table.delete())


def fresh_schema(url: str) -> str:
    """Drop the edge tables of ``url`` and migrate them anew (skip/fail if unreachable)."""
    engine = create_db_engine(url, pool_size=2)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "not here"
        engine.dispose()
        _unreachable(url, exc)
    with engine.begin() as conn:
        for table in reversed(models.metadata.sorted_tables):
            conn.execute(text(f"DROP TABLE IF EXISTS {table.name}"))
        conn.execute(text(f"DROP TABLE IF EXISTS {models.VERSION_TABLE}"))
    migrate(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def server_db_url(tmp_path_factory) -> str:
    url = os.environ.get("EDGE_KOMBU_TEST_DB", "sqlite")
    if url == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'edge.db'}"
    return fresh_schema(url)


@pytest.fixture
def db_url(server_db_url) -> str:
    engine = create_db_engine(server_db_url, pool_size=1)
    _reset(engine)
    engine.dispose()
    return server_db_url


@pytest.fixture
def store(db_url):
    engine = create_db_engine(db_url, pool_size=4)
    yield Store(engine, lease_timeout=30.0)
    engine.dispose()


@pytest.fixture
def token(store) -> str:
    return store.create_token("test-worker")


@pytest.fixture
def api_factory(db_url, tmp_path):
    servers: list[APIServer] = []

    def start(*, env: dict | None = None, extra: list[str] | None = None, port: int | None = None,
              db: str | None = None) -> APIServer:
        server = APIServer(db or db_url, tmp_path, env=env, extra=extra, port=port,
                           name=f"api{len(servers)}")
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def api(api_factory) -> APIServer:
    return api_factory()


@pytest.fixture
def broker_url(api, token) -> str:
    return api.url.replace("http://", f"edge+http://:{token}@")


@pytest.fixture
def worker_factory(tmp_path):
    workers: list[CeleryWorker] = []

    def start(broker_url: str, *, name: str | None = None, wait_ready: bool = True,
              **kwargs) -> CeleryWorker:
        worker = CeleryWorker(broker_url, tmp_path, name=name or f"w{len(workers)}", **kwargs)
        workers.append(worker)
        return worker.start(wait_ready=wait_ready)

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture
def celery_client(broker_url):
    """A fresh Celery app publishing to ``broker_url``; tasks are called by name."""
    from celery import Celery

    app = Celery("edge_test_client", broker=broker_url, backend=broker_url, set_as_current=False)
    app.conf.update(task_acks_late=True, broker_connection_retry=False)
    yield app
    app.close()
