"""Fixtures: a migrated database per test (SQLite, PostgreSQL or MariaDB), the server's
services on it, real API servers, worker tokens and real Celery workers.

``EDGE_KOMBU_TEST_DB`` picks the database: ``sqlite`` (default) or a SQLAlchemy URL.
On a server database every test session works in a scratch database of its own, created
next to the one the URL names and dropped at the end, so several sessions (CI, developers,
benchmarks) can share one server. A database server that cannot be reached skips the
tests locally and fails them in CI.
"""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest
from sqlalchemy import make_url, text

from edge_kombu.server import models
from edge_kombu.server.broker import Broker
from edge_kombu.server.credentials import Credentials
from edge_kombu.server.db import migrate
from edge_kombu.server.jobs import JobHistory
from edge_kombu.server.results import Results
from edge_kombu.server.sql import SQL, create_db_engine
from edge_kombu.server.workers import WorkerRegistry
from tests.helpers import APIServer, CeleryWorker, FakeClock

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    config.addinivalue_line("markers", "sqlite_only: runs only against the embedded SQLite default")
    config.addinivalue_line("markers", "postgres: needs PostgreSQL whatever EDGE_KOMBU_TEST_DB is")
    config.addinivalue_line(
        "markers", "postgres_only: runs only if EDGE_KOMBU_TEST_DB is PostgreSQL (tox -e postgres)")


def pytest_collection_modifyitems(config, items):
    if _test_db_backend() == "postgresql":
        return
    skip = pytest.mark.skip(reason="runs in the PostgreSQL env only (EDGE_KOMBU_TEST_DB)")
    for item in items:
        if item.get_closest_marker("postgres_only"):
            item.add_marker(skip)


def _test_db_backend() -> str:
    url = os.environ.get("EDGE_KOMBU_TEST_DB", "sqlite")
    return "sqlite" if url == "sqlite" else make_url(url).get_backend_name()


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


@contextlib.contextmanager
def scratch_database(server_url: str):
    """Yield the URL of a new, empty database on the server of ``server_url``; drop it after."""
    base = make_url(server_url)
    name = f"ek_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    engine = create_db_engine(server_url, pool_size=1)
    try:
        with engine.connect() as conn:
            autocommit = conn.execution_options(isolation_level="AUTOCOMMIT")
            autocommit.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "not here"
        engine.dispose()
        _unreachable(server_url, exc)
    try:
        yield base.set(database=name).render_as_string(hide_password=False)
    finally:
        force = " WITH (FORCE)" if base.get_backend_name() == "postgresql" else ""
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(
                text(f"DROP DATABASE IF EXISTS {name}{force}")
            )
        engine.dispose()


@pytest.fixture(scope="session")
def server_db_url(tmp_path_factory):
    url = os.environ.get("EDGE_KOMBU_TEST_DB", "sqlite")
    if url == "sqlite":
        yield fresh_schema(f"sqlite:///{tmp_path_factory.mktemp('db') / 'edge.db'}")
        return
    with scratch_database(url) as scratch:
        yield fresh_schema(scratch)


@pytest.fixture
def db_url(server_db_url) -> str:
    engine = create_db_engine(server_db_url, pool_size=1)
    _reset(engine)
    engine.dispose()
    return server_db_url


@pytest.fixture
def sql(db_url):
    """The SQL kernel on the test database, on real time."""
    sql = SQL.from_url(db_url, pool_size=4)
    yield sql
    sql.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def jobs(sql) -> JobHistory:
    return JobHistory(sql)


@pytest.fixture
def broker(sql, jobs) -> Broker:
    return Broker(sql, lease_timeout=30.0, history=jobs)


@pytest.fixture
def results(sql, jobs) -> Results:
    return Results(sql, history=jobs)


@pytest.fixture
def tokens(sql) -> Credentials:
    return Credentials(sql)


@pytest.fixture
def registry(sql, broker, jobs) -> WorkerRegistry:
    """The worker registry, wired as in the API server."""
    return WorkerRegistry(sql, broker=broker, jobs=jobs)


@pytest.fixture
def token(tokens) -> str:
    """A central token: the tests hand it to the publishing client and to the workers alike
    (what worker-scoped tokens may not do is tested in tests/server/test_scopes.py and
    tests/integration/test_scoped_workers.py)."""
    return tokens.create("test-worker", kind="central")


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
