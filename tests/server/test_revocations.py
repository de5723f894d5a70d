"""Expired Celery tasks end as REVOKED in the result backend, in Celery's own format.

Run per database with ``EDGE_KOMBU_TEST_DB``; time runs on a :class:`FakeClock`. The
stored value is read back through a real Celery key/value backend.
"""

from __future__ import annotations

import pytest
from celery import Celery, states
from celery.backends.base import KeyValueStoreBackend
from celery.exceptions import TaskRevokedError

from edge_kombu.server.broker import Broker
from edge_kombu.server.housekeeping import Housekeeping
from edge_kombu.server.jobs import JobHistory
from edge_kombu.server.results import Results
from edge_kombu.server.revocations import ExpiredTasks
from edge_kombu.server.sql import SQL
from tests.server.helpers import consume, depth, msg


def task(task_id: str, *, expiration: str | None = "1000", **headers) -> dict:
    message = msg("[[2, 2], {}, {}]", expiration=expiration)
    message["headers"].update({"id": task_id, "task": "tests.add", **headers})
    return message


@pytest.fixture
def timed_sql(sql, clock) -> SQL:
    return SQL(sql.engine, clock=clock)


@pytest.fixture
def history(timed_sql) -> JobHistory:
    return JobHistory(timed_sql)


@pytest.fixture
def stored(timed_sql, history) -> Results:
    return Results(timed_sql, history=history)


@pytest.fixture
def timed(timed_sql, history, stored) -> Broker:
    return Broker(timed_sql, lease_timeout=10.0, history=history, expired=ExpiredTasks(stored))


@pytest.fixture
def reap(timed, stored):
    return Housekeeping(timed.sql, broker=timed, results=stored).expire


@pytest.fixture
def celery_backend() -> KeyValueStoreBackend:
    """Celery's own decoding of a key/value backend's values (result_serializer json)."""
    return KeyValueStoreBackend(app=Celery("revocations", set_as_current=False))


def meta_of(stored: Results, backend: KeyValueStoreBackend, task_id: str) -> dict | None:
    value = stored.get(f"celery-task-meta-{task_id}")
    return None if value is None else backend.decode_result(value)


def test_expired_task_is_revoked_once_in_celerys_format(timed, clock, reap, stored,
                                                         celery_backend, history):
    timed.publish("", "q", task("t-1", group="g-1", parent_id="p-1"))
    clock.advance(2)
    assert consume(timed, "s1", "q") == []  # a claim skips it; the expiry drops it
    counts = reap()
    assert (counts["messages_expired"], counts["tasks_revoked"]) == (1, 1)
    meta = meta_of(stored, celery_backend, "t-1")
    assert meta["status"] == states.REVOKED
    assert isinstance(meta["result"], TaskRevokedError)
    assert meta["result"].args == ("expired",)
    assert meta["task_id"] == "t-1"
    assert (meta["group_id"], meta["parent_id"]) == ("g-1", "p-1")
    assert meta["date_done"] is not None
    assert history.page()["jobs"][0]["state"] == "revoked"
    assert reap()["tasks_revoked"] == 0  # dropped once, revoked once


def test_only_expired_unleased_celery_tasks_are_revoked(timed, clock, reap, stored):
    timed.publish("", "q", msg("not a task", expiration="1000"))
    timed.publish("", "q", task("quiet", ignore_result=True))
    timed.publish("", "q", task("no-ttl", expiration=None))
    timed.publish("", "q", task("long", expiration="60000"))
    timed.publish("", "leased", task("running"))
    consume(timed, "s1", "leased")
    clock.advance(2)
    counts = reap()
    assert (counts["messages_expired"], counts["tasks_revoked"]) == (2, 0)
    assert depth(timed, "q") == 2
    for task_id in ("quiet", "no-ttl", "long", "running"):
        assert stored.get(f"celery-task-meta-{task_id}") is None


def test_queue_ttl_revokes_a_task_too(timed, clock, reap, stored, celery_backend):
    timed.declare_queue("ttl", arguments={"x-message-ttl": 500})
    timed.publish("", "ttl", task("t-ttl", expiration=None))
    clock.advance(1)
    assert reap()["tasks_revoked"] == 1
    assert meta_of(stored, celery_backend, "t-ttl")["status"] == states.REVOKED


def test_a_success_is_never_overwritten(timed, clock, reap, stored, celery_backend):
    done = b'{"status": "SUCCESS", "result": 4, "traceback": null, "children": [], ' \
           b'"date_done": null, "task_id": "t-done"}'
    stored.set("celery-task-meta-t-done", done)
    timed.publish("", "q", task("t-done"))  # e.g. a duplicate that outlived its original
    clock.advance(2)
    assert reap()["tasks_revoked"] == 0
    assert meta_of(stored, celery_backend, "t-done")["status"] == states.SUCCESS
