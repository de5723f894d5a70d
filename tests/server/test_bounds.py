"""Hostile input at the API's boundary, against a real ``edge-kombu api`` process on the test
database (SQLite, PostgreSQL, MariaDB): every value a column cannot hold, every malformed body
is a 400 naming the field and what is allowed, never a 500; values at the limits are stored.
"""

from __future__ import annotations

import json

import pytest
import requests
from sqlalchemy import update

from edge_kombu.protocol import (
    AIRFLOW_TASK_NAME,
    API_PATH,
    HEADER_PROTOCOL,
    MAX_INT32,
    MAX_INT64,
    MAX_JSON_DEPTH,
    MAX_SECONDS,
    MAX_SLOTS,
    PROTOCOL_VERSION,
)
from edge_kombu.server import models
from tests.server.helpers import error_message, post

pytestmark = pytest.mark.timeout(180)

ADMIN = ("admin", "admin-secret-1")
TI = {"dag_id": "d", "task_id": "t", "run_id": "r", "map_index": 0, "try_number": 1}
BEAT = {"name": "bounds-w", "instance": "instance-1", "state": "idle", "queues": ["q"],
        "slots_total": 1}
BIG = 2**70
RANGE_32 = f"(allowed: -1 to {MAX_INT32})"


def message(headers=None, properties=None, body="x") -> dict:
    return {"body": body, "headers": headers or {}, "properties": properties or {}}


def publish(msg: dict) -> dict:
    return {"exchange": "", "routing_key": "bounds-q", "message": msg}


#: (route, body, what the 400's message says): one of each value the issue found a 500 for.
REFUSED = [
    ("logs/push", {**TI, "map_index": BIG, "offset": 0, "data": "x"},
     f"map_index: must be <= {MAX_INT32} {RANGE_32}"),
    ("logs/push", {**TI, "map_index": MAX_INT32 + 1, "offset": 0, "data": "x"},
     f"map_index: must be <= {MAX_INT32}"),
    ("logs/push", {**TI, "try_number": BIG, "offset": 0, "data": "x"},
     f"try_number: must be <= {MAX_INT32} (allowed: 0 to {MAX_INT32})"),
    ("logs/push", {**TI, "offset": BIG, "data": "x"}, f"offset: must be <= {MAX_INT64}"),
    ("logs/read", {**TI, "offset": BIG}, f"offset: must be <= {MAX_INT64}"),
    ("worker/heartbeat", {**BEAT, "slots_total": MAX_INT32 + 1},
     f"slots_total: must be <= {MAX_SLOTS} (allowed: 1 to {MAX_SLOTS})"),
    ("worker/heartbeat", {**BEAT, "slots_total": BIG}, "slots_total: must be <="),
    ("worker/heartbeat", {**BEAT, "slots_used": MAX_INT32 + 1}, "slots_used: must be <="),
    ("worker/heartbeat", {**BEAT, "maintenance_changed_at": BIG},
     "maintenance_changed_at: must be <="),
    ("consume", {"session": "bounds-session", "queues": [{"name": "q"}], "max_slots": BIG},
     f"max_slots: must be <= {MAX_SLOTS}"),
    ("consume", {"session": "bounds-session", "queues": [{"name": "q"}], "total_slots": BIG},
     f"total_slots: must be <= {MAX_SLOTS}"),
    ("publish", publish(message({"pool_slots": MAX_SLOTS + 1})),
     f"message.headers.pool_slots: must be <= {MAX_SLOTS}"),
    ("publish", publish(message(properties={"expiration": 10**40})),
     "message.properties.expiration: must be <="),
    ("publish", publish(message(properties={"expiration": "1e400"})),
     "message.properties.expiration: must match"),
    ("queue/declare", {"name": "bounds-ttl", "arguments": {"x-message-ttl": BIG}},
     "arguments.x-message-ttl: must be <="),
    ("queue/declare", {"name": "bounds-exp", "arguments": {"x-expires": 1e300}},
     "arguments.x-expires: must be <="),
    ("results/set", {"key": "k", "value": "v", "expires": 10**40},
     f"expires: must be <= {MAX_SECONDS}"),
    ("results/expire", {"key": "k", "expires": 1e308}, "expires: must be <="),
    ("results/incr", {"key": "k", "amount": BIG}, f"amount: must be <= {MAX_INT64}"),
    # base64 that does not decode
    ("results/set", {"key": "k", "value": "é", "encoding": "base64"}, "value: not valid base64"),
    ("results/set", {"key": "k", "value": "abc", "encoding": "base64"},
     "value: not valid base64"),
    # NUL where a text column would store it (PostgreSQL refuses NUL in text)
    ("queue/declare", {"name": "q\x00"}, "name: must not contain the NUL character"),
    ("exchange/declare", {"name": "e\x00"}, "name: must not contain the NUL character"),
    ("queue/bind", {"queue": "q", "exchange": "e", "routing_key": "r\x00"},
     "routing_key: must not contain the NUL character"),
    ("publish", {"exchange": "", "routing_key": "q\x00", "message": message()},
     "routing_key: must not contain the NUL character"),
    ("publish", publish(message({"id": "t\x00", "task": "x"})),
     "message.headers.id: must not contain the NUL character"),
    ("publish", {**publish(message()), "publish_id": "x" * 65},
     "publish_id: at most 64 characters allowed"),
    ("publish", {**publish(message()), "publish_id": "a b/c\x00def"}, "publish_id: must match"),
    ("worker/heartbeat", {**BEAT, "name": "w\x00"}, "name: must not contain the NUL character"),
    ("worker/heartbeat", {**BEAT, "maintenance_comment": "a\x00"},
     "maintenance_comment: must not contain the NUL character"),
    ("worker/deregister", {"name": "w", "instance": "i\x00"},
     "instance: must not contain the NUL character"),
    ("results/get", {"key": "k\x00"}, "key: must not contain the NUL character"),
    ("results/mget", {"keys": ["a", "k\x00"]}, "keys[1]: must not contain the NUL character"),
    ("logs/read", {**TI, "dag_id": "d\x00"}, "dag_id: must not contain the NUL character"),
    ("ack", {"session": "bounds-session", "delivery_tags": ["1.\x00"]},
     "delivery_tags[0]: must not contain the NUL character"),
    # heartbeat contents against their schema
    ("worker/heartbeat", {**BEAT, "running": [{"x": 1}]},
     "missing required field 'id', 'name' in running[0]"),
    ("worker/heartbeat", {**BEAT, "running": [{"id": "t", "name": "n", "slots": "2"}]},
     "running[0].slots: must be of type integer"),
    ("worker/heartbeat", {**BEAT, "sysinfo": {"cpu_percent": "high"}},
     "sysinfo.cpu_percent: must be of type number or null"),
    ("worker/heartbeat", {**BEAT, "sysinfo": {"extra": {"nested": 1}}},
     "sysinfo.extra: must be of type string or number or boolean or null"),
    ("worker/heartbeat", {**BEAT, "versions": {"celery": 5}},
     "versions.celery: must be of type string or null"),
]


def test_values_the_database_cannot_hold_are_refused_naming_the_field(api, token):
    wrong = []
    for route, body, expected in REFUSED:
        response = post(api, route, body, token=token)
        if response.status_code != 400 or expected not in response.text.replace("\\u0000",
                                                                                 "\x00"):
            wrong.append((route, expected, response.status_code, response.text[:200]))
        else:
            error_message(response, 400)
    assert not wrong, "\n".join(map(str, wrong))


def test_values_at_the_limits_are_stored(api, token):
    """The bounds are the columns' own: the largest values fit on every database."""
    accepted = [
        ("worker/heartbeat", {**BEAT, "slots_total": MAX_SLOTS, "slots_used": MAX_SLOTS,
                              "running": [{"id": "t1", "name": "n", "slots": MAX_SLOTS,
                                           "started": 12.5, "queue": "extra scalar"}],
                              "sysinfo": {"cpu_percent": 100, "memory_used_bytes": MAX_INT64,
                                          "load_avg": [1.5, 1, 0], "gpu": "none"},
                              "versions": {"edge_kombu": PROTOCOL_VERSION, "airflow": None}}),
        ("logs/push", {**TI, "map_index": MAX_INT32, "try_number": MAX_INT32, "offset": 0,
                       "data": "x"}),
        ("logs/push", {**TI, "map_index": -1, "offset": 0, "data": "x"}),
        ("queue/declare", {"name": "bounds-limits", "arguments": {
            "x-message-ttl": MAX_SECONDS * 1000, "x-expires": MAX_SECONDS * 1000}}),
        ("publish", {"exchange": "", "routing_key": "bounds-limits", "message": message(
            {"id": "t-max", "task": "x", "pool_slots": MAX_SLOTS},
            {"expiration": str(MAX_SECONDS * 1000), "priority": 255})}),
        ("consume", {"session": "bounds-session", "queues": [{"name": "bounds-limits"}],
                     "max_slots": MAX_SLOTS, "total_slots": MAX_SLOTS}),
        ("results/set", {"key": "k", "value": "v", "expires": MAX_SECONDS}),
        ("results/incr", {"key": "n", "amount": MAX_INT64}),
        ("results/set", {"key": "b", "value": "/w==", "encoding": "base64"}),
    ]
    for route, body in accepted:
        response = post(api, route, body, token=token)
        assert response.status_code == 200, (route, response.text)
    got = post(api, "consume", {"session": "bounds-session2",
                                "queues": [{"name": "bounds-limits"}]}, token=token).json()
    assert got["messages"] == []  # already leased by bounds-session, with all its slots
    assert post(api, "results/get", {"key": "b"}, token=token).json() == {
        "value": {"base64": "/w=="}}


def raw(api, token: str, route: str, data: bytes | str, **headers) -> requests.Response:
    sent = {HEADER_PROTOCOL: PROTOCOL_VERSION, "Authorization": f"Bearer {token}",
            "Content-Type": "application/json", **headers}
    return requests.post(f"{api.url}{API_PATH}/{route}", data=data, headers=sent, timeout=60)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(("data", "expected"), [
    ('{"name": "q", "arguments": {"a": ' + nested(1000) + "}}",
     f"JSON nested deeper than {MAX_JSON_DEPTH} levels"),
    (nested(100_000), f"JSON nested deeper than {MAX_JSON_DEPTH} levels"),
    ('{"name": "q", "arguments": {"a": ' + nested(MAX_JSON_DEPTH) + "}}",
     f"JSON nested deeper than {MAX_JSON_DEPTH} levels"),
    ('{"name": "q", "arguments": {"x-message-ttl": NaN}}', "NaN is not a JSON number"),
    ('{"name": "q", "arguments": {"x-message-ttl": -Infinity}}',
     "-Infinity is not a JSON number"),
    ('{"name": "q", "arguments": {"x-message-ttl": 1e400}}', "the number 1e400 is out of range"),
    ('{"name": "q", "arguments": {"x-message-ttl": ' + "9" * 5000 + "}}",
     "a number has too many digits"),
    ('{"name": "q\\ud800"}', "lone surrogate"),
    ('{"name": "q", "arguments": {"\\udc00": 1}}', "lone surrogate"),
    (b'{"name": "\xff"}', "not valid JSON"),
])
def test_malformed_json_is_refused_saying_why(api, token, data, expected):
    assert expected in error_message(raw(api, token, "queue/declare", data), 400)


def test_nesting_up_to_the_limit_is_stored(api, token):
    headers = {"a": json.loads(nested(MAX_JSON_DEPTH - 4))}  # body, message, headers, a
    answer = post(api, "publish", publish(message(headers)), token=token)
    assert answer.status_code == 200, answer.text


def test_what_a_message_embeds_is_bounded_before_it_is_stored(api, token):
    """Celery's headers name the task; an Airflow workload's body names its task instance:
    a NUL, a lone surrogate or a map index beyond 32 bits there leaves the job without that
    detail rather than failing the publish."""
    ti = {"dag_id": "d\x00\ud800", "task_id": "t", "run_id": "r", "map_index": 2**40,
          "try_number": 1}
    body = json.dumps([[json.dumps({"ti": ti})], {}, {}])
    msg = message({"id": "airflow-1", "task": AIRFLOW_TASK_NAME}, body=body)
    assert post(api, "publish", publish(msg), token=token).json() == {"routed": 1}
    deep = nested(100_000)
    assert post(api, "results/set", {"key": "celery-task-meta-airflow-1", "value": deep},
                token=token).status_code == 200


def test_delivery_tags_the_server_never_made_are_unknown(api, token):
    session = {"session": "bounds-session", "queues": [{"name": "q"}]}
    assert post(api, "consume", session, token=token).status_code == 200
    for tag in ("9" * 40 + ".abc", "²3.abc", "1." + "n" * 60):
        answer = post(api, "ack", {"session": "bounds-session", "delivery_tags": [tag]},
                      token=token)
        assert "not leased by this session" in error_message(answer, 404)


# -- bodies over the limit ------------------------------------------------------------------

LIMIT = 64 * 1024


def chunked(total: int):
    """A results/set body of ``total`` bytes sent in chunks, without Content-Length."""
    head, tail = b'{"key": "big", "value": "', b'"}'
    filler = total - len(head) - len(tail)
    yield head
    while filler > 0:
        piece = min(filler, 8192)
        yield b"a" * piece
        filler -= piece
    yield tail


@pytest.fixture
def small_api(api_factory):
    return api_factory(env={"EDGE_KOMBU_MAX_BODY_BYTES": str(LIMIT)})


@pytest.mark.parametrize(("size", "status"), [
    (LIMIT, 200), (LIMIT + 1, 413), (4 * LIMIT, 413), (64 * LIMIT, 413)])
def test_bodies_over_the_limit_are_413_with_or_without_content_length(small_api, token, size,
                                                                      status):
    for data in (chunked(size), b"".join(chunked(size))):  # chunked, then Content-Length
        answer = raw(small_api, token, "results/set", data)
        if status == 413:
            assert f"exceeds the limit of {LIMIT} bytes" in error_message(answer, 413)
        else:
            assert answer.status_code == 200, answer.text


def test_a_request_line_over_the_limit_is_a_documented_414(api, token):
    # The fuzz suite found it: a bundle name of thousands of escaped characters in a query.
    answer = requests.get(f"{api.url}{API_PATH}/bundles/archive", timeout=10,
                          params={"name": "é" * 1000, "sha256": "0" * 64},
                          headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 414
    assert answer.headers["Content-Type"] == "application/json"
    assert "at most 4094 bytes are allowed" in answer.json()["message"]
    headers = requests.get(f"{api.url}{API_PATH}/health", timeout=10,
                           headers={f"X-Many-{i}": "x" for i in range(120)})
    assert headers.status_code == 431
    assert "at most 100 fields" in headers.json()["message"]
    document = requests.get(f"{api.url}{API_PATH}/openapi.json", timeout=10,
                            headers={"Authorization": f"Bearer {token}"}).json()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            if path.startswith(API_PATH):
                assert {"414", "431"} <= set(operation["responses"]), (method, path)


# -- the pages --------------------------------------------------------------------------------


@pytest.fixture
def paged_api(api_factory):
    return api_factory(env={"EDGE_KOMBU_UI_ADMIN": ":".join(ADMIN)})


def test_workers_page_renders_whatever_a_worker_sent(paged_api, registry, sql):
    """Rows written before heartbeats had a schema hold anything a worker sent (the issue's
    ``"running": [{"x": 1}]`` answered 500 on this page)."""
    registry.heartbeat({
        **BEAT, "name": "odd", "running": [{"x": 1}, {"id": 7, "slots": None}],
        "sysinfo": {"cpu_percent": "high", "memory_percent": 10**40,
                    "memory_used_bytes": 10**400, "disk_free_bytes": True, "load_avg": 5},
        "versions": {"edge_kombu": {"nested": [1]}, "celery": 5},
    })
    registry.heartbeat({**BEAT, "name": "odder"})
    with sql.transaction() as tx:  # shapes no schema ever allowed, as a damaged row
        tx.conn.execute(update(models.worker).where(models.worker.c.name == "odder").values(
            running='["text", 5, null]', sysinfo="[1, 2]", versions='"1.0"'))
    for partial in ({}, {"X-Partial": "1"}):
        page = requests.get(f"{paged_api.url}/ui/workers", auth=ADMIN, headers=partial,
                            timeout=10)
        assert page.status_code == 200, page.text[:500]
        assert 'data-worker="odd"' in page.text and 'data-worker="odder"' in page.text


def test_page_actions_and_filters_are_bounded(paged_api, registry):
    registry.heartbeat({**BEAT, "name": "w1"})
    page = requests.get(f"{paged_api.url}/ui/workers", auth=ADMIN, timeout=10)
    csrf = page.text.split('name="csrf-token" content="')[1].split('"')[0]

    def act(name: str, action: str, body: dict) -> requests.Response:
        return requests.post(f"{paged_api.url}/ui/actions/workers/{name}/{action}", json=body,
                             auth=ADMIN, headers={"X-CSRF-Token": csrf}, timeout=10)

    for value in (MAX_SLOTS + 1, BIG):
        answer = act("w1", "concurrency", {"concurrency": value})
        assert f"concurrency must be >= 1 and <= {MAX_SLOTS}" in error_message(answer, 400)
    assert act("w1", "concurrency", {"concurrency": MAX_SLOTS}).status_code == 200
    answer = act("w1", "queues", {"add": ["a\x00"]})
    assert "without NUL" in error_message(answer, 400)
    assert "URL path must not contain" in error_message(act("w%00", "shutdown", {}), 400)
    for comment in (5, ["x"], "a\x00"):
        answer = act("w1", "maintenance", {"on": True, "comment": comment})
        assert "comment: text without NUL" in error_message(answer, 400)
    for change in ({"add": "abc"}, {"remove": {"a": 1}}):
        assert "lists of queue names" in error_message(act("w1", "queues", change), 400)
    assert registry.get("w1")["queues"] == ["q"] and not registry.get("w1")["maintenance"]
    answer = requests.get(f"{paged_api.url}/ui/jobs?before={BIG}", auth=ADMIN, timeout=10)
    assert f"before must be 0 to {MAX_INT64}" in error_message(answer, 400)
    for query in ("queue=%00", "worker=a%00", "q=%00", "%00=1"):
        answer = requests.get(f"{paged_api.url}/ui/jobs?{query}", auth=ADMIN, timeout=10)
        assert "must not contain the NUL character" in error_message(answer, 400)
