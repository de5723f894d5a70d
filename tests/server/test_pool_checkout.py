"""Checking a pooled connection out (:class:`~edge_kombu.server.sql.CheckoutProbe`), on the
server database under test: a connection the database dropped is replaced before a
transaction uses it, as ``pool_pre_ping`` did, but a live one costs no round trip."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from edge_kombu.server.sql import SQL, CheckoutProbe, create_db_engine
from tests.conftest import _test_db_backend
from tests.helpers import wait_for

pytestmark = pytest.mark.skipif(_test_db_backend() == "sqlite",
                                reason="a server database (EDGE_KOMBU_TEST_DB) drops connections")

_SESSION_ID = {"postgresql": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()",
               "mariadb": "SELECT CONNECTION_ID()"}


class Database:
    """Tells which server session a pooled connection is and ends it from outside."""

    def __init__(self, url: str) -> None:
        self.admin = create_engine(url, poolclass=NullPool, isolation_level="AUTOCOMMIT")
        self.backend = self.admin.dialect.name

    def session_of(self, engine) -> int:
        with engine.begin() as conn:
            return conn.execute(text(_SESSION_ID[self.backend])).scalar()

    def terminate(self, session: int) -> None:
        """End ``session`` as a restart does, and wait until the server process is gone."""
        with self.admin.connect() as conn:
            if self.backend == "postgresql":
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": session})
                alive = text("SELECT count(*) FROM pg_stat_activity WHERE pid = :id")
            else:
                conn.execute(text(f"KILL {int(session)}"))
                alive = text("SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID = :id")
            wait_for(lambda: conn.execute(alive, {"id": session}).scalar() == 0, timeout=10,
                     message=f"session {session} ended")

    def close(self) -> None:
        self.admin.dispose()


@pytest.fixture
def database(db_url):
    database = Database(db_url)
    yield database
    database.close()


@pytest.fixture
def probed(db_url):
    """A one-connection engine with a probe whose pings are counted."""
    engine = create_engine(db_url, pool_size=1, max_overflow=0)
    probe = CheckoutProbe(engine)
    pings: list[bool] = []
    ping = probe._ping

    def counted(dbapi_connection):
        try:
            ping(dbapi_connection)
        except Exception:
            pings.append(False)
            raise
        pings.append(True)

    probe._ping = counted
    probe.install()
    yield engine, probe, pings
    engine.dispose()


def test_a_live_connection_is_handed_out_without_a_ping(probed, database):
    engine, _probe, pings = probed
    first = database.session_of(engine)
    for _ in range(5):
        assert database.session_of(engine) == first
    assert pings == []


def test_a_connection_the_database_ended_is_replaced_before_use(probed, database):
    engine, _probe, pings = probed
    first = database.session_of(engine)
    database.terminate(first)
    assert database.session_of(engine) != first  # and no error
    assert pings == [False]  # the socket had the server's goodbye: pinged, and it failed


def test_a_connection_idle_longer_than_the_limit_is_pinged(probed, database):
    engine, probe, pings = probed
    first = database.session_of(engine)
    probe.idle_ping = 0.0
    assert database.session_of(engine) == first
    assert pings == [True]


def test_the_api_engine_survives_its_connections_being_ended(db_url, database):
    """All pooled connections ended at once, as a database restart does: the next
    transactions run on new ones, none fails."""
    sql = SQL(create_db_engine(db_url, pool_size=3))
    try:
        conns = [sql.engine.connect() for _ in range(3)]
        sessions = [c.execute(text(_SESSION_ID[database.backend])).scalar() for c in conns]
        for conn in conns:
            conn.close()
        for session in sessions:
            database.terminate(session)
        for _ in range(6):
            with sql.transaction() as tx:
                assert tx.conn.execute(text(_SESSION_ID[database.backend])).scalar() \
                    not in sessions
    finally:
        sql.dispose()
