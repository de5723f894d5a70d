"""The audit log, tested directly on the database under test (no HTTP).

Every admin request of the worker registry is recorded with its actor, time, target,
what changed and the comment, in the transaction of the request itself: a refused request
leaves no entry, and an entry that cannot be written undoes the request. Time runs on a
:class:`FakeClock`.
"""

from __future__ import annotations

import pytest

from edge_kombu import errors
from edge_kombu.server.audit import ACTIONS, Actor, AuditLog
from edge_kombu.server.broker import Broker
from edge_kombu.server.sql import SQL
from edge_kombu.server.workers import WorkerRegistry

ALICE = Actor("alice", "cli")
BOB = Actor("bob", "page")


@pytest.fixture
def timed_sql(sql, clock) -> SQL:
    return SQL(sql.engine, clock=clock)


@pytest.fixture
def audit(timed_sql) -> AuditLog:
    return AuditLog(timed_sql)


@pytest.fixture
def registry(timed_sql, audit) -> WorkerRegistry:
    return WorkerRegistry(timed_sql, broker=Broker(timed_sql), audit=audit)


def beat(name: str = "w1", state: str = "idle", **extra) -> dict:
    return {"name": name, "instance": f"{name}-instance", "state": state, "queues": ["celery"],
            "slots_total": 2, **extra}


def entry(audit: AuditLog, **expected) -> dict:
    """The newest entry, checked to hold ``expected``."""
    newest = audit.recent(limit=1)[0]
    assert {k: newest[k] for k in expected} == expected, newest
    return newest


def test_every_admin_request_is_recorded_with_actor_time_target_detail_and_comment(
        registry, audit, clock):
    registry.heartbeat(beat())
    clock.advance(1)
    registry.request_maintenance("w1", True, "swap disk", actor=ALICE)
    first = entry(audit, actor="alice", via="cli", action="maintenance on", target="w1",
                  detail=None, comment="swap disk")
    assert first["at"] == clock.now
    registry.request_maintenance("w1", False, actor=BOB)
    entry(audit, actor="bob", via="page", action="maintenance off", comment=None)
    registry.change_queues("w1", add=["gpu", "io"], remove=["celery"], actor=ALICE,
                           comment="new GPUs")
    entry(audit, action="queues", detail="add gpu,io; remove celery; now gpu,io",
          comment="new GPUs")
    registry.set_concurrency("w1", 6, actor=BOB)
    entry(audit, action="concurrency", detail="2 -> 6 slots")
    registry.set_concurrency("w1", 3, actor=BOB)
    entry(audit, action="concurrency", detail="6 -> 3 slots")
    registry.request_shutdown("w1", actor=ALICE, comment="decommission")
    entry(audit, action="shutdown", target="w1", comment="decommission")
    registry.deregister("w1", "w1-instance")
    clock.advance(5)
    registry.remove("w1", actor=BOB)
    last = entry(audit, actor="bob", action="remove", target="w1", detail="was offline")
    assert last["at"] == clock.now

    listed = audit.recent()
    assert [e["action"] for e in listed] == [
        "remove", "shutdown", "concurrency", "concurrency", "queues", "maintenance off",
        "maintenance on"]
    assert [e["seq"] for e in listed] == sorted((e["seq"] for e in listed), reverse=True)


def test_refused_requests_leave_no_entry(registry, audit):
    registry.heartbeat(beat())
    refused = [
        lambda: registry.request_maintenance("w1", True, None, actor=ALICE),  # no comment
        lambda: registry.request_maintenance("ghost", True, "x", actor=ALICE),
        lambda: registry.change_queues("w1", remove=["celery"], actor=ALICE),  # last queue
        lambda: registry.set_concurrency("w1", 0, actor=ALICE),
        lambda: registry.remove("w1", actor=ALICE),  # still live
        lambda: registry.request_shutdown("ghost", actor=ALICE),
    ]
    for request in refused:
        with pytest.raises((errors.InvalidRequest, errors.NotFound, errors.Conflict)):
            request()
    assert audit.recent() == []


class FailingAudit(AuditLog):
    """Writes the entry, then fails, as a database error while recording would."""

    def record(self, *args, **kwargs) -> None:
        super().record(*args, **kwargs)
        raise RuntimeError("audit write failed")


def test_an_entry_that_cannot_be_written_undoes_the_request(timed_sql, audit):
    registry = WorkerRegistry(timed_sql, broker=Broker(timed_sql), audit=FailingAudit(timed_sql))
    registry.heartbeat(beat())
    with pytest.raises(RuntimeError):
        registry.request_maintenance("w1", True, "swap disk", actor=ALICE)
    with pytest.raises(RuntimeError):
        registry.set_concurrency("w1", 8, actor=ALICE)
    worker = registry.get("w1")
    assert worker["maintenance"] is False and worker["state"] == "idle"
    assert worker["desired_concurrency"] is None
    assert audit.recent() == []  # nor is the entry kept


def test_the_workers_own_maintenance_command_is_recorded_once(registry, audit, clock):
    registry.heartbeat(beat())
    clock.advance(1)
    local = {"maintenance": True, "maintenance_comment": "local fix",
             "maintenance_changed_at": clock.now}
    registry.heartbeat(beat(state="maintenance mode", **local))
    registry.heartbeat(beat(state="maintenance mode", **local))  # the same setting again
    [only] = audit.recent()
    assert only["actor"] == "w1" and only["via"] == "worker"
    assert only["action"] == "maintenance on" and only["comment"] == "local fix"
    # An admin's request is the admin's entry, and the worker acknowledging it adds none.
    registry.request_maintenance("w1", False, actor=ALICE)
    registry.heartbeat(beat(state="idle", **local))
    assert [e["actor"] for e in audit.recent()] == ["alice", "w1"]


def test_recent_filters_by_target_and_bounds_the_limit(audit):
    for i in range(5):
        audit.record(ALICE, "concurrency", f"w{i % 2}", detail=str(i))
    audit.record(BOB, "token create", "w1")  # token actions are found under the same name
    assert [e["detail"] for e in audit.recent(target="w0")] == ["4", "2", "0"]
    assert [e["action"] for e in audit.recent(target="w1")] == [
        "token create", "concurrency", "concurrency"]
    assert len(audit.recent(limit=2)) == 2
    assert audit.recent(target="nobody") == []
    for bad in (0, 501):
        with pytest.raises(errors.InvalidRequest, match="limit must be 1 to 500"):
            audit.recent(limit=bad)


def test_entries_fit_their_columns_whatever_the_actor_and_comment(audit):
    audit.record(Actor("x" * 5000, "page"), "shutdown", "w" * 256,
                 comment="why\0 " + "y" * 5000, detail="d" * 5000)
    stored = audit.recent()[0]
    assert stored["actor"] == "x" * 256 and stored["target"] == "w" * 256
    assert stored["comment"].startswith("why\N{SYMBOL FOR NULL} ")
    assert len(stored["comment"]) == len(stored["detail"]) == 1024


def test_unknown_actions_and_origins_are_programming_errors(audit):
    with pytest.raises(ValueError, match="action must be one of"):
        audit.record(ALICE, "reboot", "w1")
    with pytest.raises(ValueError, match="via must be one of"):
        Actor("alice", "email")
    assert "token revoke" in ACTIONS and audit.recent() == []


def test_a_request_without_an_actor_is_recorded_as_unnamed(registry, audit):
    registry.heartbeat(beat())
    registry.set_concurrency("w1", 3)
    entry(audit, actor="unnamed", via="internal", action="concurrency")


def test_token_create_and_revoke_are_recorded_with_the_scope_in_their_transaction(
        timed_sql, audit, clock):
    from edge_kombu.server.credentials import Credentials

    credentials = Credentials(timed_sql, audit=audit)
    credentials.create("site-a-*", queues=["a"], publish=["b"], expires=3600, actor=ALICE)
    entry(audit, actor="alice", via="cli", action="token create", target="site-a-*",
          detail="queues a; publish b; expires in 3600s", at=clock.now)
    credentials.create("scheduler", kind="central", actor=BOB)
    entry(audit, actor="bob", action="token create", target="scheduler", detail="central")
    with pytest.raises(errors.Conflict):  # refused: nothing recorded
        credentials.create("scheduler", kind="central", actor=ALICE)
    credentials.revoke("site-a-*", actor=BOB)
    entry(audit, actor="bob", action="token revoke", target="site-a-*")
    with pytest.raises(errors.NotFound):
        credentials.revoke("site-a-*", actor=ALICE)
    assert [e["action"] for e in audit.recent()] == ["token revoke", "token create",
                                                     "token create"]
