"""Outages do not age workers or sessions: the reaper, on the database under test, with a
database that becomes unreachable for a while (the services' engine swapped for one that
cannot connect), on a :class:`FakeClock`."""

from __future__ import annotations

import logging

import jwt
import pytest

from edge_kombu.protocol import (
    API_PATH,
    HEADER_PROTOCOL,
    JWT_ALGORITHM,
    JWT_AUDIENCE,
    JWT_ROUTE_CLAIM,
    PROTOCOL_VERSION,
    jwt_signing_key,
)
from edge_kombu.server.app import create_app
from edge_kombu.server.broker import Broker
from edge_kombu.server.config import ServerConfig
from edge_kombu.server.housekeeping import Housekeeping
from edge_kombu.server.outages import Outages
from edge_kombu.server.results import Results
from edge_kombu.server.sql import SQL, create_db_engine
from edge_kombu.server.workers import WorkerRegistry
from tests.server.helpers import PRINCIPAL, consume, msg

TIMEOUT = 10.0  # worker and lease timeout
GRACE = 5.0


@pytest.fixture
def unreachable(tmp_path):
    """An engine whose every connection fails as a database that is down does."""
    engine = create_db_engine(f"sqlite:///{tmp_path}/no-such-directory/edge.db")
    yield engine
    engine.dispose()


class Site:
    """The reaper's services on one kernel whose database can be taken away."""

    def __init__(self, sql: SQL, clock, unreachable) -> None:
        self.kernel = SQL(sql.engine, clock=clock)
        self.clock = clock
        self.reachable, self.unreachable = sql.engine, unreachable
        self.broker = Broker(self.kernel, lease_timeout=TIMEOUT)
        self.workers = WorkerRegistry(self.kernel, broker=self.broker, worker_timeout=TIMEOUT)
        self.outages = Outages(GRACE, clock=clock)
        self.housekeeping = Housekeeping(self.kernel, broker=self.broker,
                                         results=Results(self.kernel), workers=self.workers,
                                         outages=self.outages)
        self.reaper = self.housekeeping.reaper(tick=1.0)

    def database_down(self) -> None:
        self.kernel.engine = self.unreachable

    def database_up(self) -> None:
        self.kernel.engine = self.reachable

    def tick(self) -> None:
        self.reaper.run_due()

    def heartbeat(self, name: str = "w1", session: str = "s-1") -> None:
        self.workers.heartbeat({"name": name, "instance": f"{name}-i", "state": "running",
                                "queues": ["q"], "slots_total": 2, "session": session})
        self.broker.touch_session(session, PRINCIPAL, ["q"])

    def state(self, name: str = "w1") -> str:
        return self.workers.get(name)["state"]

    def leased(self, queue: str = "q") -> int:
        return next(q["leased"] for q in self.broker.queue_overview() if q["name"] == queue)


@pytest.fixture
def site(sql, clock, unreachable) -> Site:
    site = Site(sql, clock, unreachable)
    site.broker.publish("", "q", msg("task"))
    site.heartbeat()
    assert len(consume(site.broker, "s-1", "q")) == 1
    clock.advance(GRACE + 1)  # the grace after the process started is over
    site.tick()
    return site


def outage(site: Site, seconds: float) -> None:
    """The database is down for ``seconds``, the reaper ticking every second."""
    site.database_down()
    for _ in range(int(seconds)):
        site.clock.advance(1)
        site.tick()
        assert site.outages.failing
    site.database_up()


def test_silent_across_an_outage_waits_out_the_grace_then_expires(site, clock, caplog):
    outage(site, 2 * TIMEOUT)  # silent for 2 timeouts when the database comes back
    with caplog.at_level(logging.WARNING, logger="edge_kombu.server.outages"):
        site.tick()
    assert not site.outages.failing
    assert "database reachable again after an outage" in caplog.text
    assert f"(grace {GRACE:g} s)" in caplog.text
    for _ in range(int(GRACE) - 1):
        clock.advance(1)
        site.tick()
        assert (site.state(), site.leased()) == ("running", 1)
    clock.advance(1.5)  # past the grace, and still silent
    site.tick()
    assert (site.state(), site.leased()) == ("unknown", 0)
    [again] = consume(site.broker, "s-2", "q")
    assert again.message["properties"]["delivery_info"]["redelivered"]


def test_a_worker_heard_within_the_grace_stays_up(site, clock):
    outage(site, 2 * TIMEOUT)
    site.tick()  # the database is back
    clock.advance(GRACE / 2)
    site.heartbeat()
    site.tick()
    clock.advance(GRACE)  # past the grace; heard GRACE ago, within the timeouts
    site.tick()
    assert (site.state(), site.leased()) == ("running", 1)
    clock.advance(TIMEOUT)  # silent again, for longer than the timeouts
    site.tick()
    assert (site.state(), site.leased()) == ("unknown", 0)


def test_the_api_answering_503_counts_as_an_outage(site, clock):
    clock.advance(2 * TIMEOUT)  # the reaper reached the database, requests did not
    site.outages.failed()  # what the API's database_down handler does
    site.tick()
    site.tick()
    assert (site.state(), site.leased()) == ("running", 1)
    clock.advance(GRACE + 1)
    site.tick()
    assert site.state() == "unknown"


def test_ttl_expiry_goes_on_during_the_grace(site, clock):
    site.broker.publish("", "q", msg("short", expiration="1000"))
    outage(site, 2 * TIMEOUT)
    counts = site.housekeeping.expire()  # the first round with the database back
    assert counts["messages_expired"] == 1
    assert (counts["sessions_expired"], site.leased()) == (0, 1)
    assert site.housekeeping.expire_silent_workers() == []


def test_an_open_session_keeps_its_idle_queue_during_the_grace(site, clock):
    site.broker.declare_queue("replies", arguments={"x-expires": 1000})
    site.broker.touch_session("s-1", PRINCIPAL, ["q", "replies"])
    outage(site, 2 * TIMEOUT)
    site.tick()
    assert any(q["name"] == "replies" for q in site.broker.queue_overview())
    clock.advance(GRACE + 1)
    site.tick()  # the session expires: its queue is unused from now on
    clock.advance(1.5)
    site.tick()
    assert not any(q["name"] == "replies" for q in site.broker.queue_overview())


def test_process_start_is_a_recovery(sql, clock, unreachable):
    Site(sql, clock, unreachable).heartbeat()
    clock.advance(2 * TIMEOUT)  # the API process was down
    site = Site(sql, clock, unreachable)  # and starts again
    site.tick()
    assert site.state() == "running"
    clock.advance(GRACE)
    site.tick()
    assert site.state() == "unknown"


# -- the API -------------------------------------------------------------------------------

SECRET = "s" * 32


def shared_secret_jwt(route: str) -> str:
    import time

    now = int(time.time())
    return jwt.encode({"sub": "central", "aud": JWT_AUDIENCE, "iat": now, "exp": now + 60,
                       JWT_ROUTE_CLAIM: route}, jwt_signing_key(SECRET), algorithm=JWT_ALGORITHM)


def test_hello_answers_503_while_the_database_is_down_health_stays_up(db_url, unreachable):
    app = create_app(ServerConfig(db_url=db_url, secret_key=SECRET), start_background=False)
    services = app.extensions["edge_kombu"]
    client = app.test_client()

    def hello():
        return client.post(f"{API_PATH}/hello", json={}, headers={
            "Authorization": f"Bearer {shared_secret_jwt('hello')}",
            HEADER_PROTOCOL: PROTOCOL_VERSION})

    try:
        assert hello().status_code == 200
        reachable, services.sql.engine = services.sql.engine, unreachable
        assert hello().status_code == 503
        assert services.outages.failing  # the handler told the reaper
        assert client.get(f"{API_PATH}/health").status_code == 200
        services.sql.engine = reachable
        assert hello().status_code == 200
    finally:
        services.shutdown()


@pytest.mark.sqlite_only
def test_the_grace_is_a_setting(monkeypatch):
    monkeypatch.setenv("EDGE_KOMBU_OUTAGE_GRACE", "2.5")
    assert ServerConfig.from_environment("sqlite://").outage_grace == 2.5
    monkeypatch.delenv("EDGE_KOMBU_OUTAGE_GRACE")
    assert ServerConfig.from_environment("sqlite://").outage_grace == 10.0
    with pytest.raises(ValueError, match="EDGE_KOMBU_OUTAGE_GRACE"):
        ServerConfig(db_url="sqlite://", outage_grace=-1)
