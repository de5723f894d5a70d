"""The worker registry, tested directly on the database under test (no HTTP).

Heartbeats, the admins' requests and what the row shows meanwhile, maintenance
precedence, one live process per name, liveness with the consumer session's leases,
and tasks too big for every worker. Time runs on a :class:`FakeClock`; nothing sleeps.
"""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import event

from edge_kombu import errors
from edge_kombu.protocol import VERSION
from edge_kombu.server.broker import Broker
from edge_kombu.server.sql import SQL
from edge_kombu.server.workers import WorkerRegistry, too_big
from tests.server.helpers import PRINCIPAL, bodies, consume, msg, redelivered, tag_of

WORKER_TIMEOUT = 10.0
LEASE_TIMEOUT = 30.0  # longer than WORKER_TIMEOUT: only the registry frees the leases early


@pytest.fixture
def timed(sql, clock) -> Broker:
    return Broker(SQL(sql.engine, clock=clock), lease_timeout=LEASE_TIMEOUT)


@pytest.fixture
def registry(timed) -> WorkerRegistry:
    return WorkerRegistry(timed.sql, broker=timed, worker_timeout=WORKER_TIMEOUT)


def beat(name: str = "w1", instance: str = "instance-1", state: str = "idle", *,
         queues=("celery",), slots_total: int = 4, **extra) -> dict:
    """One heartbeat as the worker sends it (only the required fields unless given)."""
    return {"name": name, "instance": instance, "state": state, "queues": list(queues),
            "slots_total": slots_total, **extra}


def state(registry: WorkerRegistry, name: str = "w1") -> str:
    return registry.get(name)["state"]


# -- registration -------------------------------------------------------------------------


def test_first_heartbeat_registers_the_worker(registry, clock):
    with pytest.raises(errors.NotFound):
        registry.get("w1")
    answer = registry.heartbeat(beat(state="starting", queues=["celery", "gpu"], slots_total=8,
                                     sysinfo={"cpus": 2}, versions={"edge_kombu": VERSION}))
    assert answer == {
        "state": "starting",
        "maintenance": False,
        "maintenance_comment": None,
        "shutdown": False,
        "queues": ["celery", "gpu"],
        "concurrency": None,
        "version_warning": None,
    }
    worker = registry.get("w1")
    assert worker["state"] == "starting"
    assert worker["queues"] == ["celery", "gpu"]
    assert worker["desired_queues"] is None
    assert worker["slots_total"] == 8 and worker["slots_used"] == 0
    assert worker["sysinfo"] == {"cpus": 2}
    assert worker["first_online"] == worker["last_heartbeat"] == clock.now
    assert worker["heartbeat_age"] == 0
    first_online = clock.now

    clock.advance(5)
    running = [{"id": "t1", "name": "tasks.add", "slots": 2}]
    registry.heartbeat(beat(state="running", slots_used=2, running=running, slots_total=8))
    worker = registry.get("w1")
    assert worker["state"] == "running"
    assert worker["slots_used"] == 2 and worker["running"] == running
    assert worker["first_online"] == first_online
    assert worker["last_heartbeat"] == clock.now
    clock.advance(3)
    assert registry.get("w1")["heartbeat_age"] == 3


def test_list_orders_by_name_and_filters_by_state(registry):
    registry.heartbeat(beat("w2"))
    registry.heartbeat(beat("w1", state="running"))
    registry.heartbeat(beat("w3"))
    registry.deregister("w3", "instance-1")
    assert [w["name"] for w in registry.list()] == ["w1", "w2", "w3"]
    assert [w["name"] for w in registry.list(states=["idle", "offline"])] == ["w2", "w3"]
    assert registry.list(states=["unknown"]) == []


# -- admin requests and the displayed state -------------------------------------------------


def test_maintenance_request_shown_until_the_worker_reports_maintenance(registry):
    registry.heartbeat(beat(state="running", slots_used=1))
    row = registry.request_maintenance("w1", True, "disk swap")
    assert row["state"] == "maintenance request"
    assert row["maintenance"] is True and row["maintenance_comment"] == "disk swap"

    answer = registry.heartbeat(beat(state="running"))
    assert answer["maintenance"] is True and answer["maintenance_comment"] == "disk swap"
    assert answer["state"] == state(registry) == "maintenance request"

    registry.heartbeat(beat(state="maintenance pending"))
    assert state(registry) == "maintenance pending"
    answer = registry.heartbeat(beat(state="maintenance mode"))
    assert answer["maintenance"] is True
    assert state(registry) == "maintenance mode"

    row = registry.request_maintenance("w1", False)
    assert row["state"] == "maintenance exit"
    assert row["maintenance"] is False and row["maintenance_comment"] is None
    answer = registry.heartbeat(beat(state="maintenance mode"))
    assert answer["maintenance"] is False
    assert answer["state"] == state(registry) == "maintenance exit"
    registry.heartbeat(beat(state="idle"))
    assert state(registry) == "idle"


def test_maintenance_withdrawn_before_the_worker_noticed(registry):
    registry.heartbeat(beat(state="idle"))
    assert registry.request_maintenance("w1", True, "oops")["state"] == "maintenance request"
    assert registry.request_maintenance("w1", False)["state"] == "idle"
    assert registry.heartbeat(beat(state="idle"))["maintenance"] is False


def test_maintenance_on_needs_a_comment(registry):
    registry.heartbeat(beat())
    for comment in (None, ""):
        with pytest.raises(errors.InvalidRequest, match="comment"):
            registry.request_maintenance("w1", True, comment)
    assert registry.get("w1")["maintenance"] is False
    assert len(registry.request_maintenance("w1", True, "x" * 2000)["maintenance_comment"]) == 1024


def test_requests_for_an_unknown_worker_raise_not_found(registry):
    with pytest.raises(errors.NotFound):
        registry.request_maintenance("ghost", True, "why")
    with pytest.raises(errors.NotFound):
        registry.request_shutdown("ghost")
    with pytest.raises(errors.NotFound):
        registry.change_queues("ghost", add=["q"])
    with pytest.raises(errors.NotFound):
        registry.set_concurrency("ghost", 2)
    with pytest.raises(errors.NotFound):
        registry.remove("ghost")


def test_shutdown_request_shown_until_the_worker_terminates(registry):
    registry.heartbeat(beat(state="running", slots_used=2))
    row = registry.request_shutdown("w1")
    assert row["state"] == "shutdown request" and row["shutdown_requested"] is True

    answer = registry.heartbeat(beat(state="running"))
    assert answer["shutdown"] is True
    assert answer["state"] == state(registry) == "shutdown request"
    answer = registry.heartbeat(beat(state="terminating"))
    assert answer["shutdown"] is True
    assert state(registry) == "terminating"

    registry.deregister("w1", "instance-1")
    worker = registry.get("w1")
    assert worker["state"] == "offline" and worker["shutdown_requested"] is False
    with pytest.raises(errors.Conflict, match="offline"):
        registry.request_shutdown("w1")


def test_shutdown_request_does_not_carry_over_to_a_new_instance(registry, clock):
    registry.heartbeat(beat())
    registry.request_shutdown("w1")
    clock.advance(WORKER_TIMEOUT + 1)  # the old process died without a word
    answer = registry.heartbeat(beat(instance="instance-2", state="starting"))
    assert answer["shutdown"] is False
    assert registry.get("w1")["shutdown_requested"] is False
    assert state(registry) == "starting"


# -- maintenance precedence ---------------------------------------------------------------


def test_admin_maintenance_newer_than_the_local_setting_wins(registry, clock):
    local_at = clock.now
    registry.heartbeat(beat(maintenance=False, maintenance_changed_at=local_at))
    clock.advance(10)
    registry.request_maintenance("w1", True, "by the admin")
    clock.advance(10)
    answer = registry.heartbeat(beat(maintenance=False, maintenance_changed_at=local_at))
    assert answer["maintenance"] is True
    assert answer["maintenance_comment"] == "by the admin"
    assert state(registry) == "maintenance request"


def test_local_maintenance_change_newer_than_the_admins_wins(registry, clock):
    registry.heartbeat(beat())
    registry.request_maintenance("w1", True, "by the admin")
    registry.heartbeat(beat(state="maintenance mode"))
    clock.advance(10)
    # The worker's own command, e.g. while the API was unreachable: out of maintenance.
    answer = registry.heartbeat(beat(state="idle", maintenance=False,
                                     maintenance_changed_at=clock.now - 5))
    assert answer["maintenance"] is False and answer["maintenance_comment"] is None
    worker = registry.get("w1")
    assert worker["state"] == "idle" and worker["maintenance"] is False

    clock.advance(10)
    answer = registry.heartbeat(beat(state="maintenance mode", maintenance=True,
                                     maintenance_comment="local", maintenance_changed_at=clock.now))
    assert answer["maintenance"] is True and answer["maintenance_comment"] == "local"
    assert registry.get("w1")["maintenance_comment"] == "local"

    # An admin's later change wins over that again.
    clock.advance(10)
    registry.request_maintenance("w1", False)
    answer = registry.heartbeat(beat(state="maintenance mode", maintenance=True,
                                     maintenance_comment="local",
                                     maintenance_changed_at=clock.now - 10))
    assert answer["maintenance"] is False
    assert state(registry) == "maintenance exit"


def test_maintenance_persists_across_a_restart(registry, clock):
    registry.heartbeat(beat())
    registry.request_maintenance("w1", True, "new GPU driver")
    registry.heartbeat(beat(state="maintenance mode"))
    registry.deregister("w1", "instance-1")
    assert state(registry) == "offline maintenance"

    clock.advance(60)
    answer = registry.heartbeat(beat(instance="instance-2", state="starting"))
    assert answer["maintenance"] is True
    assert answer["maintenance_comment"] == "new GPU driver"
    worker = registry.get("w1")
    assert worker["state"] == "maintenance request"
    assert worker["first_online"] == clock.now
    registry.heartbeat(beat(instance="instance-2", state="maintenance mode"))
    assert state(registry) == "maintenance mode"


def test_admin_maintenance_of_an_offline_worker(registry):
    registry.heartbeat(beat())
    registry.deregister("w1", "instance-1")
    assert registry.request_maintenance("w1", True, "later")["state"] == "offline maintenance"
    assert registry.request_maintenance("w1", False)["state"] == "offline"


# -- one live process per name ------------------------------------------------------------


def test_second_live_instance_with_the_same_name_conflicts(registry, clock):
    registry.heartbeat(beat(instance="instance-1"))
    clock.advance(WORKER_TIMEOUT - 1)
    with pytest.raises(errors.Conflict, match="already online"):
        registry.heartbeat(beat(instance="instance-2", state="starting"))
    assert state(registry) == "idle"
    assert registry.get("w1")["heartbeat_age"] == WORKER_TIMEOUT - 1


def test_new_instance_allowed_once_the_first_is_offline(registry, clock):
    registry.heartbeat(beat(instance="instance-1"))
    registry.deregister("w1", "instance-1")
    clock.advance(1)
    assert registry.heartbeat(beat(instance="instance-2", state="starting"))["state"] == "starting"
    assert registry.get("w1")["first_online"] == clock.now
    # Now the old process is the stranger.
    with pytest.raises(errors.Conflict):
        registry.heartbeat(beat(instance="instance-1"))


def test_new_instance_allowed_once_the_first_is_silent_past_the_timeout(registry, clock):
    registry.heartbeat(beat(instance="instance-1"))
    clock.advance(WORKER_TIMEOUT + 1)  # not even expired yet by the reaper
    assert state(registry) == "idle"
    assert registry.heartbeat(beat(instance="instance-2", state="starting"))["state"] == "starting"
    assert state(registry) == "starting"


def test_deregister_of_another_instance_is_ignored(registry):
    registry.heartbeat(beat(instance="instance-1"))
    registry.deregister("w1", "instance-0")
    registry.deregister("ghost", "instance-1")
    assert state(registry) == "idle"


def test_deregister_marks_offline_or_offline_maintenance(registry):
    registry.heartbeat(beat("w1", state="running", slots_used=2, running=[{"id": "t"}]))
    registry.heartbeat(beat("w2"))
    registry.request_maintenance("w2", True, "cabling")
    registry.heartbeat(beat("w2", state="maintenance mode"))

    registry.deregister("w1", "instance-1")
    registry.deregister("w2", "instance-1")
    w1, w2 = registry.get("w1"), registry.get("w2")
    assert w1["state"] == "offline"
    assert w1["slots_used"] == 0 and w1["running"] == []
    assert w2["state"] == "offline maintenance" and w2["maintenance"] is True


# -- liveness -----------------------------------------------------------------------------


def test_expire_silent_marks_unknown_and_redelivers_the_workers_leases(registry, timed, clock):
    timed.publish("", "tasks", msg("job"))
    [leased] = consume(timed, "session-w1", "tasks")
    registry.heartbeat(beat("w1", state="running", queues=["tasks"], slots_used=1,
                            session="session-w1"))
    registry.heartbeat(beat("w2"))
    registry.request_maintenance("w2", True, "quiet")
    registry.heartbeat(beat("w2", state="maintenance mode"))
    registry.heartbeat(beat("w3"))
    registry.deregister("w3", "instance-1")

    clock.advance(WORKER_TIMEOUT / 2)
    registry.heartbeat(beat("w4"))
    assert registry.expire_silent() == []

    clock.advance(WORKER_TIMEOUT / 2 + 1)
    # The lease outlives the worker's silence: nobody else can have the message yet.
    assert consume(timed, "session-other", "tasks") == []

    assert sorted(registry.expire_silent()) == ["w1", "w2"]
    w1 = registry.get("w1")
    assert w1["state"] == "unknown" and w1["slots_used"] == 0 and w1["running"] == []
    assert state(registry, "w2") == "offline maintenance"
    assert state(registry, "w3") == "offline"
    assert state(registry, "w4") == "idle"

    [again] = consume(timed, "session-other", "tasks")
    assert bodies([again]) == ["job"] and redelivered(again) is True
    assert tag_of(again) != tag_of(leased)
    with pytest.raises(errors.SessionClosed):
        timed.claim("session-w1", [("tasks", False)])
    assert registry.expire_silent() == []

    # The same process comes back (a network partition healed): it is online again.
    registry.heartbeat(beat("w1", state="idle", queues=["tasks"], session="session-w1b"))
    assert state(registry, "w1") == "idle"


# -- queues and concurrency ---------------------------------------------------------------


def test_change_queues_add_and_remove(registry):
    registry.heartbeat(beat(queues=["celery"]))
    row = registry.change_queues("w1", add=["gpu", "celery"])
    assert row["desired_queues"] == ["celery", "gpu"]
    assert row["queues"] == ["celery"]  # as the worker last said
    answer = registry.heartbeat(beat(queues=["celery"]))
    assert answer["queues"] == ["celery", "gpu"]

    registry.heartbeat(beat(queues=["celery", "gpu"]))
    assert registry.change_queues("w1", remove=["celery"])["desired_queues"] == ["gpu"]
    assert registry.heartbeat(beat(queues=["celery", "gpu"]))["queues"] == ["gpu"]
    assert registry.change_queues("w1", add=["b"], remove=["gpu"])["desired_queues"] == ["b"]


def test_change_queues_refuses_to_remove_the_last_queue(registry):
    registry.heartbeat(beat(queues=["celery"]))
    with pytest.raises(errors.InvalidRequest, match="at least one queue"):
        registry.change_queues("w1", remove=["celery"])
    assert registry.get("w1")["desired_queues"] is None
    registry.change_queues("w1", add=["gpu"])
    with pytest.raises(errors.InvalidRequest):
        registry.change_queues("w1", remove=["celery", "gpu"])
    assert registry.get("w1")["desired_queues"] == ["celery", "gpu"]
    for bad in ("", "q" * 257):
        with pytest.raises(errors.InvalidRequest, match="1 to 256"):
            registry.change_queues("w1", add=[bad])


def test_set_concurrency(registry):
    registry.heartbeat(beat(slots_total=4))
    for bad in (0, -1):
        with pytest.raises(errors.InvalidRequest, match=">= 1"):
            registry.set_concurrency("w1", bad)
    assert registry.get("w1")["desired_concurrency"] is None
    assert registry.set_concurrency("w1", 1)["desired_concurrency"] == 1
    assert registry.set_concurrency("w1", 6)["desired_concurrency"] == 6
    answer = registry.heartbeat(beat(slots_total=4))
    assert answer["concurrency"] == 6
    assert answer["queues"] == ["celery"]


def test_remove_only_gone_workers(registry, clock):
    for name in ("live", "off", "offmaint", "silent"):
        registry.heartbeat(beat(name))
    registry.request_maintenance("offmaint", True, "x")
    registry.deregister("off", "instance-1")
    registry.deregister("offmaint", "instance-1")
    clock.advance(WORKER_TIMEOUT - 1)
    registry.heartbeat(beat("live", state="running"))
    clock.advance(2)
    assert registry.expire_silent() == ["silent"]

    with pytest.raises(errors.Conflict, match="only offline or unknown"):
        registry.remove("live")
    assert state(registry, "live") == "running"
    for name in ("off", "offmaint", "silent"):
        registry.remove(name)
        with pytest.raises(errors.NotFound):
            registry.get(name)
    assert [w["name"] for w in registry.list()] == ["live"]


def test_version_warning_for_another_minor_version_only(registry):
    major, minor, _ = VERSION.split(".")
    other = f"{major}.{int(minor) + 1}.0"
    assert registry.heartbeat(beat(versions={"edge_kombu": VERSION}))["version_warning"] is None
    assert registry.get("w1")["version_warning"] is None

    warning = registry.heartbeat(beat(versions={"edge_kombu": other}))["version_warning"]
    assert warning and other in warning and VERSION in warning
    assert registry.get("w1")["version_warning"] == warning
    assert registry.get("w1")["versions"] == {"edge_kombu": other}

    assert registry.heartbeat(beat(versions={"edge_kombu": VERSION}))["version_warning"] is None
    assert registry.get("w1")["version_warning"] is None
    assert registry.heartbeat(beat())["version_warning"] is None


# -- tasks too big for every worker -------------------------------------------------------


def test_too_big_flags_a_queue_no_live_worker_can_serve(registry, timed, caplog):
    timed.publish("", "gpu", msg("huge", slots=3))
    timed.publish("", "gpu", msg("small", slots=1))
    timed.publish("", "lonely", msg("unconsumed", slots=9))  # nobody consumes it: not this
    timed.publish("", "celery", msg("fits", slots=2))
    registry.heartbeat(beat("w1", queues=["gpu", "celery"], slots_total=2))
    registry.heartbeat(beat("w2", queues=["celery"], slots_total=8))

    expected = [{"queue": "gpu", "slots": 3, "largest_worker": 2}]
    assert registry.max_slots_by_queue() == {"gpu": 2, "celery": 8}
    assert too_big(timed.queue_overview(), registry.max_slots_by_queue()) == expected
    with caplog.at_level(logging.WARNING, logger="edge_kombu.server.workers"):
        assert registry.report_too_big() == expected
        assert registry.report_too_big() == expected
    warnings = [r.getMessage() for r in caplog.records if "needing 3 slots" in r.getMessage()]
    assert len(warnings) == 1 and "'gpu'" in warnings[0]

    # A bigger worker takes the queue on: fine. It leaves: flagged again.
    registry.heartbeat(beat("w3", queues=["other"], slots_total=4))
    assert registry.report_too_big() == expected
    registry.change_queues("w3", add=["gpu"])
    assert registry.report_too_big() == []
    registry.deregister("w3", "instance-1")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge_kombu.server.workers"):
        assert registry.report_too_big() == expected
    assert any("needing 3 slots" in r.getMessage() for r in caplog.records)


def test_too_big_ignores_a_big_task_already_running(registry, timed):
    """The largest *waiting* task counts: one that a worker already runs is not too big."""
    timed.publish("", "gpu", msg("huge", slots=4))
    timed.publish("", "gpu", msg("small", slots=1))
    [running] = consume(timed, "session-w1", "gpu", max_slots=4)
    assert bodies([running]) == ["huge"]
    # Its admin lowered the worker's concurrency meanwhile; the big task runs on.
    registry.heartbeat(beat("w1", queues=["gpu"], slots_total=2, session="session-w1"))
    [gpu] = [q for q in timed.queue_overview() if q["name"] == "gpu"]
    assert gpu["ready"] == 1 and gpu["leased"] == 1
    assert gpu["max_slots"] == 1
    assert registry.report_too_big() == []


def test_queue_overview_counts_ready_and_leased(registry, timed, clock):
    timed.declare_queue("empty")
    timed.publish("", "q", msg("old", slots=2))
    clock.advance(10)
    timed.publish("", "q", msg("new", slots=1))
    timed.publish("", "q", msg("ttl", expiration="1000"))
    clock.advance(5)
    [leased] = consume(timed, "session-1", "q")
    assert bodies([leased]) == ["old"]
    timed.publish("", "busy", msg("running", slots=3))
    consume(timed, "session-2", "busy", max_slots=3)

    overview = {q["name"]: q for q in timed.queue_overview()}
    assert list(overview) == ["busy", "empty", "q"]
    assert overview["busy"] == {"name": "busy", "ready": 0, "leased": 1, "oldest_age": None,
                                "max_slots": None, "consumers": 1}
    assert overview["empty"] == {"name": "empty", "ready": 0, "leased": 0, "oldest_age": None,
                                 "max_slots": None, "consumers": 0}
    # The expired message no longer counts; the oldest *ready* message waited 5 s.
    assert overview["q"] == {"name": "q", "ready": 1, "leased": 1, "oldest_age": 5.0,
                             "max_slots": 1, "consumers": 1}


def test_session_closed_by_expiry_cannot_be_reopened(registry, timed, clock):
    """A worker's session closed by the registry stays closed: the worker opens a new one."""
    consume(timed, "session-w1", "tasks")
    registry.heartbeat(beat(queues=["tasks"], session="session-w1"))
    clock.advance(WORKER_TIMEOUT + 1)
    registry.expire_silent()
    with pytest.raises(errors.SessionClosed):
        timed.touch_session("session-w1", PRINCIPAL, ["tasks"])
    timed.touch_session("session-w1-2", PRINCIPAL, ["tasks"])


def test_a_heartbeat_racing_the_expiry_keeps_the_worker_online(registry, timed, clock):
    """A heartbeat committed between the reaper's look and its write wins: the worker
    stays online and keeps its leases (no duplicate run of its tasks)."""
    if timed.sql.engine.dialect.name == "sqlite":
        pytest.skip("SQLite serialises writers: the heartbeat would wait for the reaper")
    timed.publish("", "tasks", msg("job"))
    consume(timed, "session-w1", "tasks")
    registry.heartbeat(beat(state="running", queues=["tasks"], session="session-w1"))
    clock.advance(WORKER_TIMEOUT + 1)

    raced = []

    def heartbeat_in_between(conn, cursor, statement, *_):
        if not raced and statement.lstrip().upper().startswith("UPDATE EDGE_KOMBU_WORKER"):
            raced.append(True)  # before: the heartbeat's own UPDATE passes here too
            registry.heartbeat(beat(state="running", queues=["tasks"], session="session-w1"))

    event.listen(timed.sql.engine, "before_cursor_execute", heartbeat_in_between)
    try:
        expired = registry.expire_silent()
    finally:
        event.remove(timed.sql.engine, "before_cursor_execute", heartbeat_in_between)
    assert raced, "expire_silent wrote no worker row"
    assert expired == []
    assert state(registry) == "running"
    assert consume(timed, "session-other", "tasks") == []
    timed.touch_session("session-w1", PRINCIPAL, ["tasks"])  # still open


# -- what `airflow edge` needs: names, filters, the comment alone, everyone at once ---------


def test_list_filters_by_name_pattern_and_served_queue(registry):
    registry.heartbeat(beat("site-1@a", queues=["remote"]))
    registry.heartbeat(beat("site-2@b", queues=["gpu", "remote"]))
    registry.heartbeat(beat("hq@c", queues=["default"]))
    registry.change_queues("hq@c", add=["gpu"])  # asked for counts before reported
    assert [w["name"] for w in registry.list(pattern="site-*")] == ["site-1@a", "site-2@b"]
    assert [w["name"] for w in registry.list(queues=["gpu"])] == ["hq@c", "site-2@b"]
    assert [w["name"] for w in registry.list(pattern="site-*", queues=["gpu", "x"])] == [
        "site-2@b"]
    assert registry.list(pattern="nowhere*") == []


def test_find_by_full_name_or_either_part(registry):
    registry.heartbeat(beat("celery@site-1"))
    registry.heartbeat(beat("celery@site-2"))
    registry.heartbeat(beat("gpu@site-2", instance="instance-2"))
    assert registry.find("celery@site-1") == "celery@site-1"
    assert registry.find("site-1") == "celery@site-1"
    assert registry.find("gpu") == "gpu@site-2"
    with pytest.raises(errors.Conflict, match="names 2 workers"):
        registry.find("site-2")
    with pytest.raises(errors.NotFound):
        registry.find("site-3")


def test_maintenance_comment_changes_alone_and_reaches_the_worker(registry, clock):
    registry.heartbeat(beat())
    with pytest.raises(errors.Conflict, match="not in maintenance"):
        registry.update_maintenance_comment("w1", "why")
    registry.request_maintenance("w1", True, "disk swap")
    registry.heartbeat(beat(state="maintenance mode", maintenance=True,
                            maintenance_comment="disk swap"))
    clock.advance(5)
    row = registry.update_maintenance_comment("w1", "disk swap, then reboot")
    assert (row["state"], row["maintenance"]) == ("maintenance mode", True)
    answer = registry.heartbeat(beat(state="maintenance mode", maintenance=True,
                                     maintenance_comment="disk swap",
                                     maintenance_changed_at=clock.now - 10))
    assert (answer["maintenance"], answer["maintenance_comment"]) == (
        True, "disk swap, then reboot")
    assert [e["action"] for e in registry.audit.recent(target="w1")][:2] == [
        "maintenance comment", "maintenance on"]
    with pytest.raises(errors.InvalidRequest):
        registry.update_maintenance_comment("w1", "")


def test_shutdown_all_asks_every_running_worker_once(registry):
    registry.heartbeat(beat("w1"))
    registry.heartbeat(beat("w2", state="running", slots_used=1))
    registry.heartbeat(beat("w3"))
    registry.deregister("w3", "instance-1")
    assert registry.request_shutdown_all() == ["w1", "w2"]
    assert [state(registry, n) for n in ("w1", "w2", "w3")] == [
        "shutdown request", "shutdown request", "offline"]
    assert registry.request_shutdown_all() == []  # already asked
