"""Plain Celery workers registered from their consumer sessions, and a declare that does
not count the declaring process's own carried-on session (the registry's and broker's
rules; tests/integration/test_plain_workers.py runs real workers)."""

from __future__ import annotations

import pytest

from edge_kombu import errors
from tests.server.test_cli_workers import beat

MAILBOX = "node1@host.celery.pidbox"


def test_a_session_consuming_a_mailbox_registers_its_node(registry, broker):
    broker.touch_session("s-plain-1", "tok", ["celery", MAILBOX, "celeryev.x"])
    worker = registry.get("node1@host")
    assert (worker["kind"], worker["state"], worker["queues"]) == ("celery", "idle", ["celery"])

    node = {"name": "node1@host", "pool": "prefork", "concurrency": 6,
            "versions": {"celery": "5.5.0"}}
    broker.touch_session("s-plain-1", "tok", ["celery", "remote", MAILBOX], node)
    worker = registry.get("node1@host")
    assert (worker["slots_total"], worker["sysinfo"], worker["queues"]) == (
        6, {"pool": "prefork"}, ["celery", "remote"])
    assert [w["name"] for w in registry.list()] == ["node1@host"]
    with pytest.raises(errors.Conflict, match="celery -A <app> control"):
        registry.request_maintenance("node1@host", True, "disk")

    # Its session closes: offline at the next liveness pass.
    broker.close_session("s-plain-1")
    registry.expire_silent()
    assert registry.get("node1@host")["state"] == "offline"


def test_reply_queues_and_monitors_are_not_workers(registry, broker):
    broker.touch_session("s-client-1", "tok", ["0f3a.reply.celery.pidbox"])
    broker.touch_session("s-monitor", "tok", ["celeryev.abc"])
    assert registry.list() == []


def test_an_edge_workers_own_registration_is_kept_and_takes_a_plain_row_over(registry, broker):
    registry.heartbeat(beat("edge1", queues=["remote"], session="s-edge-1"))
    broker.touch_session("s-edge-1", "tok", ["remote", "edge1.celery.pidbox"],
                         {"name": "edge1", "concurrency": 9})
    worker = registry.get("edge1")
    assert (worker["kind"], worker["slots_total"]) == ("edge", 4)
    registry.deregister("edge1", "edge1-instance")  # its poll may still come afterwards
    broker.touch_session("s-edge-1", "tok", ["remote", "edge1.celery.pidbox"],
                         {"name": "edge1", "concurrency": 9, "pool": "prefork"})
    assert (registry.get("edge1")["kind"], registry.get("edge1")["state"]) == ("edge", "offline")

    broker.touch_session("s-plain-2", "tok", ["celery", "edge2.celery.pidbox"])
    assert registry.get("edge2")["kind"] == "celery"
    registry.heartbeat(beat("edge2", queues=["celery"]))  # not "already online"
    assert registry.get("edge2")["kind"] == "edge"
    assert len(registry.list()) == 2


def test_a_declare_does_not_count_its_own_sessions_of_its_own_credential(broker):
    broker.touch_session("s-old-session", "tok", [MAILBOX])
    assert broker.declare_queue(MAILBOX).consumers == 1
    mine = broker.declare_queue(MAILBOX, principal="tok", own_sessions=["s-old-session"])
    assert mine.consumers == 0
    # Another credential cannot hide a consumer it did not open.
    other = broker.declare_queue(MAILBOX, principal="intruder", own_sessions=["s-old-session"])
    assert other.consumers == 1


@pytest.mark.sqlite_only
def test_a_server_older_than_the_new_fields_gets_the_request_without_them():
    from edge_kombu.transport.client import call_without_new_fields

    sent = []

    class OldServer:
        def call(self, verb, body, **kwargs):
            sent.append(dict(body))
            if "node" in body:
                raise errors.InvalidRequest("body: unknown field(s) 'node'; allowed: queues")
            return {"messages": []}

    assert call_without_new_fields(OldServer(), "consume", {"queues": [], "node": {}},
                                    ("node",)) == {"messages": []}
    assert sent == [{"queues": [], "node": {}}, {"queues": []}]
    with pytest.raises(errors.InvalidRequest):  # other refusals are not retried
        call_without_new_fields(OldServer(), "consume", {"node": {}}, ("own_sessions",))
