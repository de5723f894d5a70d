"""Worker tokens' contract, tested directly against the database under test.

Run per database with ``EDGE_KOMBU_TEST_DB``; time runs on a :class:`FakeClock`.
"""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import event, select

from edge_kombu import errors
from edge_kombu.server import models
from edge_kombu.server.credential_cache import CountedFreshness, CredentialCache
from edge_kombu.server.credentials import Credentials
from edge_kombu.server.sql import SQL


@pytest.fixture
def timed(sql, clock) -> Credentials:
    """Credentials on the same database whose time is ``clock``."""
    return Credentials(SQL(sql.engine, clock=clock))


# -- tokens -------------------------------------------------------------------------------


def test_create_and_look_up_token(tokens):
    token = tokens.create("site-a")
    assert token.startswith("ekt_") and len(token) > 30
    assert tokens.principal_for(token) == "site-a"
    assert tokens.principal_for(token + "x") is None
    assert tokens.principal_for("") is None


def test_token_is_stored_only_as_sha256(tokens):
    token = tokens.create("site-a")
    with tokens.sql.connect() as conn:
        rows = [tuple(row) for row in conn.execute(select(models.token)).all()]
    assert len(rows) == 1
    assert all(token not in str(value) for value in rows[0])
    assert hashlib.sha256(token.encode()).hexdigest() in rows[0]


def test_duplicate_token_name_conflicts(tokens):
    token = tokens.create("site-a")
    with pytest.raises(errors.Conflict):
        tokens.create("site-a")
    assert tokens.principal_for(token) == "site-a"


def test_revoke_token(tokens):
    token = tokens.create("site-a")
    other = tokens.create("site-b")
    tokens.revoke("site-a")
    assert tokens.principal_for(token) is None
    assert tokens.principal_for(other) == "site-b"
    with pytest.raises(errors.NotFound):
        tokens.revoke("site-a")
    with pytest.raises(errors.NotFound):
        tokens.revoke("never")
    assert tokens.principal_for(tokens.create("site-a")) == "site-a"


def test_list_tokens(timed, clock):
    assert timed.list() == []
    timed.create("b-site")
    clock.advance(1)
    timed.create("a-site")
    timed.create("central-x", kind="central", expires=60)
    timed.create("c-*", queues=["q1", "q2"], publish=["q3"], issue_token=False)
    listed = timed.list()
    assert listed == [
        {"name": "a-site", "kind": "worker", "queues": ["celery"], "publish": [], "token": True,
         "created_at": clock.now, "expires_at": None, "last_used_at": None},
        {"name": "b-site", "kind": "worker", "queues": ["celery"], "publish": [], "token": True,
         "created_at": clock.now - 1, "expires_at": None, "last_used_at": None},
        {"name": "c-*", "kind": "worker", "queues": ["q1", "q2"], "publish": ["q3"],
         "token": False, "created_at": clock.now, "expires_at": None, "last_used_at": None},
        {"name": "central-x", "kind": "central", "queues": [], "publish": [], "token": True,
         "created_at": clock.now, "expires_at": clock.now + 60, "last_used_at": None},
    ]


# -- scopes -------------------------------------------------------------------------------


def test_token_scope_kind_and_expiry(timed, clock):
    worker = timed.create("site-a-*", queues=["qa", "qa"], publish=["cb"], expires=3600)
    central = timed.create("scheduler", kind="central")
    entry = timed.lookup(worker)
    assert (entry.name, entry.kind, entry.queues, entry.publish) == (
        "site-a-*", "worker", ("qa",), ("cb",))
    assert entry.expires_at == clock.now + 3600
    assert timed.lookup(central).central and timed.lookup(central).queues == ()
    assert timed.lookup(timed.create("plain")).queues == ("celery",)  # Celery's default queue
    for bad in ({"kind": "root"}, {"expires": 0}, {"kind": "central", "queues": ["q"]},
                {"queues": ["q\x00"]}):
        with pytest.raises(errors.InvalidRequest):
            timed.create("x", **bad)


def test_worker_entry_for_a_name_exact_then_longest_pattern(timed):
    timed.create("site-*", queues=["wide"], issue_token=False)
    timed.create("site-a-*", queues=["narrow"], issue_token=False)
    timed.create("site-a-7", queues=["exact"])
    timed.create("site-a-8", kind="central")
    assert timed.for_worker("site-a-7").queues == ("exact",)
    assert timed.for_worker("site-a-1@host").queues == ("narrow",)
    assert timed.for_worker("site-b-1").queues == ("wide",)
    assert timed.for_worker("site-a-8").queues == ("narrow",)  # central rows name no worker
    assert timed.for_worker("other") is None


def test_still_valid_follows_revocation_and_expiry(timed, clock):
    token = timed.create("site-a-*", expires=10)
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert timed.still_valid("site-a-*", digest, fresh=True)
    assert not timed.still_valid("site-a-*", "0" * 64, fresh=True)
    clock.advance(11)
    assert not timed.still_valid("site-a-*", digest, fresh=True)
    timed.create("site-b-*", issue_token=False)
    assert timed.still_valid("site-b-*", None, fresh=True)
    timed.revoke("site-b-*")
    assert not timed.still_valid("site-b-*", None, fresh=True)


def test_last_use_is_recorded(timed, clock):
    token = timed.create("site-a-*")
    timed.lookup(token)
    assert timed.list()[0]["last_used_at"] == clock.now


# -- the per-process cache -------------------------------------------------------------------


@pytest.fixture
def token_reads(sql):
    """How many statements have read the token table so far (a list of one count)."""
    count = [0]

    def before(_conn, _cursor, statement, *_args):
        if statement.lstrip().upper().startswith("SELECT") and "edge_kombu_token" in statement:
            count[0] += 1

    event.listen(sql.engine, "before_cursor_execute", before)
    yield count
    event.remove(sql.engine, "before_cursor_execute", before)


def test_a_cached_process_reads_no_token_until_another_process_changes_one(sql, token_reads):
    """Two processes on one database (two Credentials): the one serving requests reads
    each credential once; a revocation or a new entry made by the other is seen on the
    next lookup."""
    api = Credentials(sql, cache=CredentialCache(CountedFreshness(sql)))
    admin = Credentials(sql)
    token = admin.create("site-a-*", queues=["qa"])
    digest = hashlib.sha256(token.encode()).hexdigest()
    for _ in range(5):
        assert api.lookup(token).name == "site-a-*"
        assert api.for_worker("site-a-1").name == "site-a-*"
        assert api.still_valid("site-a-*", digest)
    assert token_reads[0] == 4  # the token; the worker's name, then the patterns; validity
    admin.create("site-a-1", queues=["exact"], issue_token=False)
    assert api.for_worker("site-a-1").queues == ("exact",)
    admin.revoke("site-a-*")
    assert api.lookup(token) is None
    assert not api.still_valid("site-a-*", digest)
    assert api.for_worker("site-a-2") is None


def test_the_generation_read_survives_its_connection_failing(sql):
    """The quick read's own connection breaks (a database restart): the read goes through
    the pool and the next one opens a new connection."""
    fresh = CountedFreshness(sql)
    before = fresh.stamp()
    Credentials(sql).create("site-a-*")
    changed = fresh.stamp()
    assert changed != before
    if sql._quick is not None:  # SQLite and PostgreSQL read on a connection of their own
        sql._quick[1].close()
    assert fresh.stamp() == changed
    assert fresh.stamp() == changed
