"""Task logs in the database: append by offset, idempotent retries, ranges, purge.

Run per database with ``EDGE_KOMBU_TEST_DB`` (see ``tests/conftest.py``), directly on
:class:`~edge_kombu.server.logs.TaskLogs` without HTTP.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from edge_kombu import errors
from edge_kombu.server.logs import TaskInstanceTry, TaskLogs
from edge_kombu.server.sql import SQL

TI = TaskInstanceTry("dag", "task", "manual__2026-11-25", -1, 1)


@pytest.fixture
def logs(sql, clock) -> TaskLogs:
    return TaskLogs(SQL(sql.engine, clock=clock), retention_days=1)


def test_chunks_append_in_order_and_read_back(logs):
    assert logs.length(TI) is None
    assert logs.append(TI, 0, "line 1\n") == 7
    assert logs.append(TI, 7, "line 2 é\n") == 17
    got = logs.read(TI)
    assert (got.data, got.length, got.next_offset, got.found) == (
        "line 1\nline 2 é\n", 17, 17, True)
    assert logs.length(TI) == 17


def test_a_retried_chunk_is_not_appended_twice(logs):
    logs.append(TI, 0, "a\n")
    logs.append(TI, 2, "b\n")
    assert logs.append(TI, 0, "a\n") == 4
    assert logs.append(TI, 2, "b\n") == 4
    assert logs.read(TI).data == "a\nb\n"


def test_an_overlapping_chunk_appends_only_its_new_tail(logs):
    logs.append(TI, 0, "abc")
    assert logs.append(TI, 1, "bcdef") == 6
    assert logs.read(TI).data == "abcdef"


def test_a_gap_is_a_conflict_naming_the_stored_length(logs):
    logs.append(TI, 0, "abc")
    with pytest.raises(errors.Conflict, match="push from offset 3"):
        logs.append(TI, 10, "x")
    assert logs.read(TI).data == "abc"
    with pytest.raises(errors.Conflict, match="push from offset 0"):
        logs.append(TaskInstanceTry("dag", "task", "other"), 5, "x")


def test_bad_chunks_are_refused(logs):
    with pytest.raises(errors.InvalidRequest, match="NUL"):
        logs.append(TI, 0, "a\x00b")
    with pytest.raises(errors.InvalidRequest, match="surrogate"):
        logs.append(TI, 0, "a\ud800b")
    with pytest.raises(errors.InvalidRequest, match="offset"):
        logs.append(TI, -1, "x")
    assert logs.length(TI) is None


def test_ranges_are_cut_at_characters(logs):
    logs.append(TI, 0, "ab")
    logs.append(TI, 2, "€cd")  # € is 3 bytes: offsets 2..5
    logs.append(TI, 7, "ef")
    assert logs.read(TI, 1, 2).data == "b"  # stops before the middle of €
    assert logs.read(TI, 3, 4).data == "cd"  # starts after it
    middle = logs.read(TI, 2, 5)
    assert (middle.data, middle.offset, middle.next_offset) == ("€cd", 2, 7)
    assert logs.read(TI, 9).data == ""
    whole, pos = "", 0
    while pos < 9:
        part = logs.read(TI, pos, 3)
        whole, pos = whole + part.data, part.next_offset
    assert whole == "ab€cdef"


def test_each_try_and_map_index_has_its_own_log(logs):
    tries = [TaskInstanceTry("dag", "task", "run", index, number)
             for index in (-1, 0, 1) for number in (1, 2)]
    for n, ti in enumerate(tries):
        logs.append(ti, 0, f"log {n}")
    assert [logs.read(ti).data for ti in tries] == [f"log {n}" for n in range(len(tries))]
    assert not logs.read(TaskInstanceTry("dag", "task", "run", 2, 1)).found


def test_racing_retries_of_a_chunk_store_it_once(logs):
    chunks = [(i * 4, f"{i:03d}\n") for i in range(20)]
    with ThreadPoolExecutor(4) as pool:
        for offset, data in chunks:  # each chunk sent by four racing requests at once
            lengths = list(pool.map(logs.append, [TI] * 4, [offset] * 4, [data] * 4))
            assert lengths == [offset + 4] * 4
    assert logs.read(TI).data == "".join(data for _, data in chunks)


def test_purge_drops_logs_idle_beyond_the_retention(logs, clock):
    old = TaskInstanceTry("dag", "task", "old")
    logs.append(old, 0, "old\n")
    clock.advance(86400 - 10)
    logs.append(TI, 0, "new\n")
    assert logs.purge() == 0
    clock.advance(20)
    assert logs.purge() == 1
    assert not logs.read(old).found
    assert logs.read(TI).data == "new\n"
    clock.advance(86400)
    assert logs.purge() == 1
    assert logs.length(TI) is None
