"""The results key/value store's contract, tested directly against the database under test.

Run per database with ``EDGE_KOMBU_TEST_DB``; time runs on a :class:`FakeClock`.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from edge_kombu import errors
from edge_kombu.server.broker import Broker
from edge_kombu.server.housekeeping import Housekeeping
from edge_kombu.server.results import Results
from edge_kombu.server.sql import SQL


@pytest.fixture
def timed(sql, clock) -> Results:
    """Results on the same database whose time is ``clock``."""
    return Results(SQL(sql.engine, clock=clock))


@pytest.fixture
def reap(timed):
    """One round of expiry, as the reaper runs it every second."""
    return Housekeeping(timed.sql, broker=Broker(timed.sql), results=timed).expire


# -- results ------------------------------------------------------------------------------


def test_set_get_and_mget_keep_order(results):
    results.set("a", b"1")
    results.set("b", b"2")
    results.set("a", b"one")  # overwrite
    assert results.get("a") == b"one"
    assert results.get("missing") is None
    assert results.mget(["b", "missing", "a", "b"]) == [b"2", None, b"one", b"2"]
    assert results.mget([]) == []


def test_keep_success_keeps_a_stored_success_only(timed, clock):
    success = b'{"status": "SUCCESS", "result": 4, "task_id": "t"}'
    started = b'{"status": "STARTED", "result": null, "task_id": "t"}'
    assert timed.set("k", started, keep_success=True) is True
    assert timed.set("k", success, keep_success=True) is True
    # A lost task's late update (Celery's own guard, kept by the server): not written.
    assert timed.set("k", started, keep_success=True) is False
    assert timed.get("k") == success
    assert timed.set("k", started) is True  # without it, as any key-value write
    for value in (b"SUCCESS", b"\x80{not json SUCCESS", b'["SUCCESS"]'):  # not a result
        timed.set("other", value)
        assert timed.set("other", started, keep_success=True) is True
    timed.set("old", success, expires=10)
    clock.advance(11)  # an expired result is gone, whatever it said
    assert timed.set("old", started, keep_success=True) is True


def test_binary_values_round_trip(results):
    value = bytes(range(256)) * 4 + b"\x00"
    results.set("bin", value)
    assert bytes(results.get("bin")) == value


def test_large_value_round_trips(results):
    value = b"x" * (2 * 1024 * 1024)
    results.set("big", value)
    assert bytes(results.get("big")) == value


def test_result_expiry(timed, clock, reap):
    timed.set("k", b"v", expires=10)
    timed.set("keep", b"v")
    clock.advance(9)
    assert timed.get("k") == b"v"
    clock.advance(2)
    assert timed.get("k") is None
    assert timed.mget(["k", "keep"]) == [None, b"v"]
    assert reap()["results_expired"] == 1
    assert timed.get("keep") == b"v"


def test_set_without_expiry_clears_an_old_expiry(timed, clock):
    timed.set("k", b"v", expires=10)
    timed.set("k", b"w")
    clock.advance(100)
    assert timed.get("k") == b"w"


def test_delete_result(results):
    results.set("k", b"v")
    results.delete("k")
    assert results.get("k") is None
    results.delete("k")  # deleting a missing key is fine


def test_incr(results):
    assert results.incr("n") == 1
    assert results.incr("n", 5) == 6
    assert results.incr("n", -10) == -4
    assert results.get("n") == b"-4"
    results.set("m", b"41")
    assert results.incr("m") == 42


def test_incr_on_non_integer_conflicts(results):
    results.set("k", b"not a number")
    with pytest.raises(errors.Conflict):
        results.incr("k")
    assert results.get("k") == b"not a number"


def test_incr_restarts_an_expired_counter(timed, clock):
    timed.incr("n", 5, expires=10)
    clock.advance(11)
    assert timed.get("n") is None
    assert timed.incr("n") == 1


def test_expire_result(timed, clock):
    timed.set("k", b"v")
    assert timed.expire("k", 5) is True
    assert timed.expire("missing", 5) is False
    clock.advance(4)
    assert timed.get("k") == b"v"
    assert timed.expire("k", None) is True  # persist again
    clock.advance(100)
    assert timed.get("k") == b"v"
    timed.expire("k", 1)
    clock.advance(2)
    assert timed.get("k") is None


def test_concurrent_incr_is_atomic(results):
    workers, increments = 8, 25
    start = threading.Barrier(workers)

    def work(_: int) -> list[int]:
        start.wait()
        return [results.incr("chord-counter") for _ in range(increments)]

    with ThreadPoolExecutor(workers) as pool:
        seen = [v for values in pool.map(work, range(workers)) for v in values]
    assert sorted(seen) == list(range(1, workers * increments + 1))
    assert results.get("chord-counter") == b"200"
