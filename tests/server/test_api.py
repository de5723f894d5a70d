"""The edge API over HTTP, against real ``edge-kombu api`` server processes.

Raw-protocol cases use ``requests`` directly; the rest use the worker's own
:class:`~edge_kombu.transport.client.EdgeClient`. Every server log of a test is
checked at teardown for the credentials the test used.
"""

from __future__ import annotations

import os
import secrets
import signal
import statistics
import subprocess
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack

import jwt
import pytest
import requests
from jsonschema import Draft202012Validator
from sqlalchemy import make_url

from edge_kombu import errors
from edge_kombu.protocol import (
    API_PATH,
    HEADER_PROTOCOL,
    JWT_ALGORITHM,
    JWT_AUDIENCE,
    JWT_ROUTE_CLAIM,
    MAX_NAME_LENGTH,
    PROTOCOL_VERSION,
    REQUESTS,
    jwt_signing_key,
)
from edge_kombu.server.config import ENV_SECRET
from edge_kombu.server.credentials import Credentials
from edge_kombu.server.sql import SQL, create_db_engine
from edge_kombu.server.wakeup import PostgresListener, PostgresWakeup, WaiterRegistry
from edge_kombu.transport.client import EdgeClient
from tests.conftest import _reset, fresh_schema, scratch_database
from tests.helpers import BIN, ROOT, wait_for
from tests.server.helpers import error_message, post

POSTGRES_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
HOW_TO_AUTHENTICATE = "Authorization: Bearer"


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def credentials(tmp_path):
    """Credentials a test used: none of them may appear in any server log of the test."""
    used: list[str] = []
    yield used
    # Autouse, so set up first and torn down last: the servers have stopped by now.
    for log in tmp_path.glob("api*.log"):
        content = log.read_text(errors="replace")
        for credential in used:
            assert credential not in content, f"{log.name} contains a credential"


@pytest.fixture
def connect(api_factory):
    """Make EdgeClients; closed before the servers stop, which then wait for no idle keep-alive."""
    clients: list[EdgeClient] = []

    def make(url: str, **kwargs) -> EdgeClient:
        client = EdgeClient(url, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def failure(call, *args) -> errors.EdgeError:
    """The EdgeError ``call(*args)`` raises, without the traceback (whose frames hold sockets)."""
    try:
        call(*args)
    except errors.EdgeError as exc:
        return exc.with_traceback(None)
    raise AssertionError(f"{call} did not fail")


def session_id() -> str:
    return uuid.uuid4().hex


def message(body: str = "payload", **headers) -> dict:
    return {"body": body, "content-type": "text/plain", "headers": headers, "properties": {}}


def consumers(client: EdgeClient, queue: str) -> int:
    return client.call("queue/declare", {"name": queue, "passive": True})["consumers"]


def consume_in_background(pool: ThreadPoolExecutor, client: EdgeClient, body: dict) -> Future:
    """Start a consume; its future yields ``(answer, monotonic time the answer arrived)``."""

    def run():
        answer = client.call("consume", body, timeout=body.get("wait", 0) + 30)
        return answer, time.monotonic()

    return pool.submit(run)


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real ``edge-kombu`` command."""
    return subprocess.run(
        [str(BIN / "edge-kombu"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **(env or {})),
    )


def mint_jwt(secret: str, route: str, *, lifetime: float = 60, issued: float | None = None) -> str:
    issued = time.time() if issued is None else issued
    claims = {
        "sub": "tester",
        "aud": JWT_AUDIENCE,
        "iat": int(issued),
        "exp": int(issued + lifetime),
        JWT_ROUTE_CLAIM: route,
    }
    return jwt.encode(claims, jwt_signing_key(secret), algorithm=JWT_ALGORITHM)


# -- authentication ----------------------------------------------------------------------


def test_health_is_open(api):
    response = requests.get(f"{api.url}{API_PATH}/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["protocol"] == PROTOCOL_VERSION


def test_every_other_route_needs_credentials(api):
    for route in REQUESTS:
        # A request that would be valid but for the credential.
        message_ = error_message(post(api, route, {}), 401)
        assert HOW_TO_AUTHENTICATE in message_ and "edge-kombu token create" in message_, route
    response = requests.get(f"{api.url}{API_PATH}/openapi.json", timeout=10)
    assert HOW_TO_AUTHENTICATE in error_message(response, 401)

    bogus = "ekt_" + secrets.token_urlsafe(32)
    for header, expected in (
        (f"Basic {bogus}", "malformed Authorization header"),
        ("Bearer ", "malformed Authorization header"),
        (f"Bearer {bogus}", "unknown or revoked worker token"),
        ("Bearer not-a-credential", "unrecognised credential"),
    ):
        message_ = error_message(post(api, "hello", headers={"Authorization": header}), 401)
        assert expected in message_, (header, message_)
        assert bogus not in message_


def test_worker_token_works_until_revoked(api, token, tokens, credentials, connect):
    credentials.append(token)
    client = connect(api.url, token=token)
    assert client.call("hello")["principal"] == "test-worker"
    assert client.call("queue/declare", {"name": "tasks"})["messages"] == 0

    tokens.revoke("test-worker")
    error = failure(client.call, "hello")
    assert isinstance(error, errors.AuthenticationFailed) and error.status == 401
    assert "unknown or revoked worker token" in error.message
    assert token not in error.message


def test_token_cli_create_list_revoke(api, db_url, credentials, connect):
    created = cli("token", "create", "--worker", "site-a", "--db", db_url)
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ekt_"), created.stdout
    site_token = lines[0]
    credentials.append(site_token)
    assert site_token not in created.stderr
    assert connect(api.url, token=site_token).call("hello")["principal"] == "site-a"

    again = cli("token", "create", "--worker", "site-a", "--db", db_url)
    assert again.returncode == 1 and again.stdout == ""
    assert "Error: a token for 'site-a' exists already" in again.stderr

    for listing in (cli("token", "list", "--db", db_url),
                    cli("token", "list", "--json", "--db", db_url)):
        assert listing.returncode == 0, listing.stderr
        assert "site-a" in listing.stdout
        assert "ekt_" not in listing.stdout + listing.stderr

    revoked = cli("token", "revoke", "site-a", "--db", db_url)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked the token of site-a" in revoked.stderr
    error_message(post(api, "hello", token=site_token), 401)
    assert "site-a" not in cli("token", "list", "--db", db_url).stdout

    missing = cli("token", "revoke", "site-a", "--db", db_url)
    assert missing.returncode == 1
    assert "Error: no token for 'site-a'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_shared_secret_mode(api_factory, credentials, connect):
    secret = secrets.token_hex(16)
    wrong = secrets.token_hex(16)
    credentials.extend([secret, wrong])
    server = api_factory(env={ENV_SECRET: secret}, extra=["--access-log"])

    client = connect(server.url, secret=secret, client_name="site-b")
    assert client.call("hello")["principal"] == "shared-secret:site-b"
    client.call("queue/declare", {"name": "tasks"})
    published = client.call("publish", {"exchange": "", "routing_key": "tasks",
                                        "message": message()})
    assert published == {"routed": 1}

    error = failure(connect(server.url, secret=wrong).call, "hello")
    assert isinstance(error, errors.AuthenticationFailed) and error.status == 401
    assert "shared secret" in error.message
    assert secret not in error.message and wrong not in error.message

    for credential, expected in (
        (mint_jwt(secret, "hello"), "minted for route 'hello', not 'queue/purge'"),
        (mint_jwt(secret, "queue/purge", issued=time.time() - 3600), "JWT expired"),
        (mint_jwt(wrong, "queue/purge"), "JWT rejected"),
        (jwt.encode({"sub": "x", "aud": JWT_AUDIENCE}, jwt_signing_key(secret),
                    algorithm=JWT_ALGORITHM), "JWT rejected"),  # no expiry, no route
        (jwt.encode({"sub": "x", "aud": JWT_AUDIENCE, "iat": int(time.time()),
                     "exp": int(time.time() + 60), JWT_ROUTE_CLAIM: "queue/purge"},
                    jwt_signing_key(secret), algorithm="HS256"), "JWT rejected"),
    ):
        response = post(server, "queue/purge", {"name": "tasks"}, token=credential)
        message_ = error_message(response, 401)
        assert expected in message_, message_
        assert secret not in message_ and wrong not in message_ and credential not in message_
    # Nothing above got through.
    assert client.call("queue/declare", {"name": "tasks", "passive": True})["messages"] == 1


def test_jwt_without_server_secret_is_refused(api, credentials):
    secret = secrets.token_hex(16)
    credentials.append(secret)
    message_ = error_message(post(api, "hello", token=mint_jwt(secret, "hello")), 401)
    assert "this server has no shared secret" in message_
    assert "use a worker token" in message_


def test_short_secret_stops_the_server_at_startup(db_url, credentials):
    short = "tooshort1234"
    credentials.append(short)
    result = cli("api", "--bind", "127.0.0.1:1", "--db", db_url, env={ENV_SECRET: short})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "Error: the shared secret ([core] internal_api_secret_key) must be at least "
        "16 characters long"
    ], result.stderr
    assert short not in result.stdout + result.stderr


# -- bad input ---------------------------------------------------------------------------


def test_bad_input_is_a_clean_4xx(api, token, credentials):
    credentials.append(token)
    session = session_id()
    long_name = "q" * (MAX_NAME_LENGTH + 1)
    json_header = {"Content-Type": "application/json"}
    cases = [
        # (route, request keyword arguments, status, text the message must contain)
        ("queue/declare", {"data": b'{"name": "q"', "headers": json_header}, 400,
         "not valid JSON"),
        ("queue/declare", {"data": b"\xff\xfe", "headers": json_header}, 400, "not valid JSON"),
        ("queue/declare", {"body": ["q"]}, 400, "must be a JSON object"),
        ("queue/declare", {"body": "q"}, 400, "must be a JSON object"),
        ("queue/declare", {"body": None, "data": b'{"name": "q"}'}, 400,
         "Content-Type must be application/json"),
        ("queue/declare", {"data": b'{"name": "q"}', "headers": {"Content-Type": "text/plain"}},
         400, "Content-Type must be application/json"),
        ("queue/declare", {"body": {"name": 5}}, 400, "name: must be of type string, got int"),
        ("queue/declare", {"body": {"name": "q", "durable": "yes"}}, 400,
         "durable: must be of type boolean, got str"),
        ("queue/declare", {"body": {}}, 400, "missing required field 'name'"),
        ("queue/declare", {"body": {"name": "q", "colour": "red"}}, 400,
         "unknown field(s) 'colour'"),
        ("queue/declare", {"body": {"name": ""}}, 400, "name: at least 1 character(s) required"),
        ("queue/declare", {"body": {"name": long_name}}, 400,
         "name: at most 256 characters allowed, got 257"),
        ("queue/bind", {"body": {"queue": "q", "exchange": long_name}}, 400,
         "exchange: at most 256 characters allowed, got 257"),
        ("publish", {"body": {"exchange": "", "routing_key": long_name, "message": message()}},
         400, "routing_key: at most 256 characters allowed, got 257"),
        ("consume", {"body": {"session": session, "queues": [{"name": long_name}]}}, 400,
         "queues[0].name: at most 256 characters allowed, got 257"),
        ("consume", {"body": {"session": session, "queues": "q"}}, 400,
         "queues: must be of type array, got str"),
        ("consume", {"body": {"session": session, "queues": [], "wait": "5"}}, 400,
         "wait: must be of type number, got str"),
        ("consume", {"body": {"session": session, "queues": [], "wait": 61}}, 400,
         "wait: must be <= 60"),
        ("consume", {"body": {"session": session, "queues": [], "max_messages": 0}}, 400,
         "max_messages: must be >= 1"),
        ("consume", {"body": {"session": "bad id!", "queues": []}}, 400,
         "session: at least 8 character(s) required"),
        ("consume", {"body": {"session": "bad session id!", "queues": []}}, 400,
         "session: must match"),
        ("exchange/declare", {"body": {"name": "x", "type": "headers"}}, 400,
         "type: must be one of 'direct', 'topic', 'fanout'"),
        ("results/set", {"body": {"key": "k", "value": "%%%", "encoding": "base64"}}, 400,
         "value: not valid base64"),
        ("results/mget", {"body": {"keys": ["k"] * 10_001}}, 400,
         "keys: at most 10000 items allowed, got 10001"),
        ("publish", {"body": {"exchange": "", "routing_key": "q",
                              "message": message(pool_slots="2")}}, 400,
         "message.headers.pool_slots must be an integer >= 1, got '2'"),
        ("publish", {"body": {"exchange": "", "routing_key": "q",
                              "message": message(pool_slots=0)}}, 400,
         "message.headers.pool_slots must be an integer >= 1, got 0"),
        ("publish", {"body": {"exchange": "", "routing_key": "q",
                              "message": message(pool_slots=True)}}, 400,
         "message.headers.pool_slots must be an integer >= 1"),
        ("publish", {"body": {"exchange": "", "routing_key": "q",
                              "message": {"body": "x"}}}, 400,
         "missing required field 'properties' in message"),
        ("ack", {"body": {"session": session, "delivery_tags": ["garbage"]}}, 404,
         "'garbage'"),
        ("ack", {"body": {"session": session, "delivery_tags": ["999999.abcdef"]}}, 404,
         "'999999.abcdef'"),
        ("reject", {"body": {"session": session, "delivery_tags": ["garbage"]}}, 404,
         "'garbage'"),
        ("reject", {"body": {"session": session, "delivery_tags": ["999999.abcdef"],
                             "requeue": True}}, 404, "'999999.abcdef'"),
        ("queue/declare", {"body": {"name": "q"}, "headers": {HEADER_PROTOCOL: None}}, 400,
         f"missing header {HEADER_PROTOCOL} (this server speaks {PROTOCOL_VERSION})"),
        ("queue/declare", {"body": {"name": "q"}, "headers": {HEADER_PROTOCOL: "one"}}, 400,
         "is not of the form MAJOR.MINOR"),
        ("queue/declare", {"body": {"name": "q"}, "headers": {HEADER_PROTOCOL: "2.0"}}, 426,
         "only clients of protocol 1.x"),
        ("queue/declare", {"body": {"name": "q"}, "headers": {HEADER_PROTOCOL: "0.9"}}, 426,
         "only clients of protocol 1.x"),
        ("no/such/route", {"body": {}}, 404, f"no route POST {API_PATH}/no/such/route"),
    ]
    for route, kwargs, status, expected in cases:
        kwargs = dict(kwargs)
        body = kwargs.pop("body", None)
        response = post(api, route, body, token=token, **kwargs)
        message_ = error_message(response, status)
        assert expected in message_, (route, kwargs, message_)
        assert token not in message_

    # The longest allowed name is accepted, and so is a minor version of the same major.
    accepted = post(api, "queue/declare", {"name": "q" * MAX_NAME_LENGTH}, token=token,
                    headers={HEADER_PROTOCOL: "1.7"})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["name"] == "q" * MAX_NAME_LENGTH

    # Methods and paths outside the protocol.
    response = requests.get(f"{api.url}{API_PATH}/publish", timeout=10)
    assert "method GET not allowed" in error_message(response, 405)
    assert "POST" in response.headers.get("Allow", "")
    response = requests.get(f"{api.url}/no/such/page", timeout=10)
    assert "no route GET /no/such/page" in error_message(response, 404)
    response = requests.put(f"{api.url}{API_PATH}/health", timeout=10)
    error_message(response, 405)

    log = api.log()
    assert "Traceback" not in log and "unhandled error" not in log, log


def test_body_limit_and_configured_limits(api_factory, token, credentials, connect):
    credentials.append(token)
    server = api_factory(extra=["--max-body-bytes", "2048", "--max-wait", "2"])
    client = connect(server.url, token=token)
    hello = client.call("hello")
    assert hello["max_body_bytes"] == 2048 and hello["max_wait"] == 2.0

    client.call("queue/declare", {"name": "tasks"})
    small = {"exchange": "", "routing_key": "tasks", "message": message("x" * 1000)}
    assert client.call("publish", small) == {"routed": 1}
    large = {"exchange": "", "routing_key": "tasks", "message": message("x" * 4000)}
    message_ = error_message(post(server, "publish", large, token=token), 413)
    assert "request body exceeds the limit of 2048 bytes" in message_
    assert "--max-body-bytes" in message_
    assert isinstance(failure(client.call, "publish", large), errors.PayloadTooLarge)
    assert client.call("queue/declare", {"name": "tasks", "passive": True})["messages"] == 1

    # A consume asking for longer than the server's --max-wait waits only that long.
    start = time.monotonic()
    answer = client.call("consume", {"session": session_id(), "queues": [{"name": "other"}],
                                     "wait": 30})
    elapsed = time.monotonic() - start
    assert answer == {"messages": []}
    assert 1.9 <= elapsed < 5, elapsed


# -- OpenAPI -----------------------------------------------------------------------------


def test_openapi_document(api, token, credentials):
    credentials.append(token)
    response = requests.get(f"{api.url}{API_PATH}/openapi.json",
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    doc = response.json()
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["security"] == [{"bearer": []}]
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert doc["paths"][f"{API_PATH}/health"]["get"]["security"] == []

    operation_ids = set()
    for route, schema in REQUESTS.items():
        operation = doc["paths"][f"{API_PATH}/{route}"]["post"]
        operation_ids.add(operation["operationId"])
        assert operation["summary"]
        assert operation["requestBody"]["content"]["application/json"]["schema"] == schema
        Draft202012Validator.check_schema(schema)  # OpenAPI 3.1 schemas are JSON Schema 2020-12
        assert {"200", "400", "401"} <= set(operation["responses"])
        for code, answer in operation["responses"].items():
            if code != "200":
                ref = answer["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Error"
        assert any(p["name"] == HEADER_PROTOCOL and p["in"] == "header"
                   for p in operation["parameters"])
    assert len(operation_ids) == len(REQUESTS)
    assert set(doc["components"]["schemas"]["Error"]["required"]) == {"error", "message"}


# -- long-poll ---------------------------------------------------------------------------


def test_consume_waits_until_a_publish_or_the_wait_ends(api, token, credentials, connect):
    credentials.append(token)
    client = connect(api.url, token=token)
    publisher = connect(api.url, token=token)
    client.call("queue/declare", {"name": "tasks"})

    # Nothing arrives: an empty answer after the full wait.
    start = time.monotonic()
    answer = client.call("consume", {"session": session_id(), "queues": [{"name": "tasks"}],
                                     "wait": 1.0})
    elapsed = time.monotonic() - start
    assert answer == {"messages": []}
    assert 0.95 <= elapsed < 3, elapsed

    # A publish answers a waiting consume at once.
    latencies = []
    with ThreadPoolExecutor(1) as pool:
        for i in range(3):
            queue = f"tasks-{i}"
            client.call("queue/declare", {"name": queue})
            started = time.monotonic()
            future = consume_in_background(
                pool, client, {"session": session_id(), "queues": [{"name": queue}], "wait": 5}
            )
            wait_for(lambda q=queue: consumers(client, q) == 1, timeout=10,
                     message="the consume to reach the server")
            assert not future.done()
            published = time.monotonic()
            publisher.call("publish", {"exchange": "", "routing_key": queue,
                                       "message": message(f"m{i}")})
            answer, answered = future.result(timeout=10)
            assert [m["message"]["body"] for m in answer["messages"]] == [f"m{i}"]
            latencies.append(answered - published)
            assert answered - started < 4  # not the end of the wait
    print(f"single-process wake latencies: {[round(t * 1000, 1) for t in latencies]} ms")
    assert max(latencies) < 0.5, latencies


def test_session_wake_cuts_a_waiting_consume_short(api, token, credentials, connect):
    credentials.append(token)
    client = connect(api.url, token=token)
    client.call("queue/declare", {"name": "tasks"})
    session = session_id()
    with ThreadPoolExecutor(1) as pool:
        future = consume_in_background(
            pool, client, {"session": session, "queues": [{"name": "tasks"}], "wait": 10}
        )
        wait_for(lambda: consumers(client, "tasks") == 1, timeout=10,
                 message="the consume to reach the server")
        assert not future.done()
        # Another session's wake leaves it waiting.
        client.call("session/wake", {"session": session_id()})
        woken = time.monotonic()
        client.call("session/wake", {"session": session})
        answer, answered = future.result(timeout=10)
    assert answer == {"messages": []}
    print(f"session/wake latency: {(answered - woken) * 1000:.1f} ms")
    assert answered - woken < 0.5


def test_ack_wakes_the_same_sessions_waiting_consume(api, token, credentials, connect):
    credentials.append(token)
    client = connect(api.url, token=token)
    for queue in ("tasks", "control"):
        client.call("queue/declare", {"name": queue})
    for i in range(2):
        client.call("publish", {"exchange": "", "routing_key": "tasks",
                                "message": message(f"m{i}")})
    session = session_id()
    # A worker with one slot takes the first message ...
    first = client.call("consume", {"session": session, "queues": [{"name": "tasks"}],
                                    "max_slots": 1})["messages"]
    assert [m["message"]["body"] for m in first] == ["m0"]
    tag = first[0]["message"]["properties"]["delivery_tag"]
    with ThreadPoolExecutor(1) as pool:
        # ... and, with no slot free, waits (also on its control queue, so that we can see
        # the consume arrive) while the second message stays queued.
        future = consume_in_background(pool, client, {
            "session": session, "queues": [{"name": "tasks"}, {"name": "control", "no_ack": True}],
            "max_slots": 0, "wait": 10,
        })
        wait_for(lambda: consumers(client, "control") == 1, timeout=10,
                 message="the consume to reach the server")
        assert not future.done()
        acked = time.monotonic()
        assert client.call("ack", {"session": session, "delivery_tags": [tag]}) == {
            "settled": 1, "unknown": []
        }
        answer, answered = future.result(timeout=10)
    assert answer == {"messages": []}  # its capacity changed: it asks again
    print(f"ack wake latency: {(answered - acked) * 1000:.1f} ms")
    assert answered - acked < 0.5
    again = client.call("consume", {"session": session, "queues": [{"name": "tasks"}],
                                    "max_slots": 1})["messages"]
    assert [m["message"]["body"] for m in again] == ["m1"]


# -- several server processes on one PostgreSQL database ---------------------------------


@pytest.fixture(scope="session")
def postgres_schema():
    """The edge tables, migrated once per session, in a scratch PostgreSQL database."""
    with scratch_database(POSTGRES_URL) as url:
        yield fresh_schema(url)


@pytest.fixture
def postgres_url(request, db_url) -> str:
    """An empty PostgreSQL database, whichever database the other tests run on."""
    if make_url(db_url).get_backend_name() == "postgresql":
        return db_url  # migrated and emptied by the db_url fixture
    url = request.getfixturevalue("postgres_schema")
    engine = create_db_engine(url, pool_size=1)
    _reset(engine)
    engine.dispose()
    return url


@pytest.mark.postgres
def test_publish_on_one_server_wakes_a_consume_on_another(
    api_factory, postgres_url, credentials, connect
):
    sql = SQL.from_url(postgres_url, pool_size=1)
    try:
        # Central: it declares and consumes queues of any name (scoped tokens: test_scopes.py).
        token = Credentials(sql).create("cross-process", kind="central")
    finally:
        sql.dispose()
    credentials.append(token)
    server_a = api_factory(db=postgres_url)
    server_b = api_factory(db=postgres_url)
    consumer = connect(server_a.url, token=token)
    publisher = connect(server_b.url, token=token)

    latencies = []
    with ThreadPoolExecutor(1) as pool:
        for i in range(7):
            queue = f"remote-{i}"
            publisher.call("queue/declare", {"name": queue})
            future = consume_in_background(
                pool, consumer, {"session": session_id(), "queues": [{"name": queue}], "wait": 5}
            )
            wait_for(lambda q=queue: consumers(publisher, q) == 1, timeout=10,
                     message="the consume to reach server A")
            assert not future.done()
            published = time.monotonic()
            publisher.call("publish", {"exchange": "", "routing_key": queue,
                                       "message": message(f"m{i}")})
            answer, answered = future.result(timeout=10)
            assert [m["message"]["body"] for m in answer["messages"]] == [f"m{i}"]
            latencies.append(answered - published)
    print(f"cross-process wake latencies: {[round(t * 1000, 1) for t in latencies]} ms")
    assert statistics.median(latencies) < 0.1, latencies
    assert max(latencies) < 0.5, latencies


@pytest.mark.postgres
def test_a_message_published_in_another_process_wakes_one_waiter_here(postgres_url):
    """As within one process: a new message wakes one waiting consume it fits, not every
    consume on its queue (3,000 workers on one queue over two processes: waking all made
    each publish cost the other process some 1,500 claim transactions)."""
    here = WaiterRegistry()
    elsewhere = SQL.from_url(postgres_url, pool_size=1, wakeup=PostgresWakeup(WaiterRegistry()))
    listener = PostgresListener(elsewhere.engine, here, origin="p:here")
    listener.start()

    def heard_after(change) -> None:
        """Commit ``change`` elsewhere, then a session wake-up: once that is heard here,
        so was the change (notifications arrive in commit order)."""
        with elsewhere.transaction() as tx:
            change(tx)
        marker = f"marker-{uuid.uuid4().hex}"
        with here.waiting(["none"], marker, None) as waiter:
            with elsewhere.transaction() as tx:
                tx.sessions.add(marker)
            assert waiter.wait(10), "the listener heard nothing"

    def published(tx, count=1, slots=1) -> None:
        tx.queues.add("q")
        tx.fresh["q"] = (count, slots)

    try:
        assert listener.listening.wait(10)
        heard_after(lambda tx: None)  # the wake-up of all when it started listening is past
        with ExitStack() as stack:
            waiters = [stack.enter_context(here.waiting(["q"], f"s{i}", 8)) for i in range(5)]
            heard_after(published)
            assert sum(w.event.is_set() for w in waiters) == 1
            heard_after(lambda tx: published(tx, count=2))
            assert sum(w.event.is_set() for w in waiters) == 3
            heard_after(lambda tx: published(tx, slots=9))  # fits none of them
            assert sum(w.event.is_set() for w in waiters) == 3
            heard_after(lambda tx: tx.queues.add("q"))  # a requeue: every waiter looks again
            assert all(w.event.is_set() for w in waiters)
    finally:
        listener.stop()
        with elsewhere.transaction() as tx:
            tx.sessions.add("bye")  # ends the listener's wait for notifications now
        listener.join(10)
        elsewhere.dispose()


# -- graceful stop -----------------------------------------------------------------------


def test_stopping_the_server_answers_a_waiting_consume(api_factory, token, credentials, connect):
    credentials.append(token)
    server = api_factory()
    client = connect(server.url, token=token, connect_retries=0)
    client.call("queue/declare", {"name": "tasks"})
    with ThreadPoolExecutor(1) as pool:
        future = consume_in_background(
            pool, client, {"session": session_id(), "queues": [{"name": "tasks"}], "wait": 10}
        )
        wait_for(lambda: consumers(client, "tasks") == 1, timeout=10,
                 message="the consume to reach the server")
        assert not future.done()
        stopping = time.monotonic()
        server.kill(signal.SIGTERM)
        answer, answered = future.result(timeout=15)
        server.proc.wait(15)
        exited = time.monotonic()
    assert answer == {"messages": []}
    print(f"consume answered {(answered - stopping) * 1000:.1f} ms after SIGTERM; "
          f"server exited after {(exited - stopping):.2f} s")
    assert answered - stopping < 1.0
    assert exited - stopping < 8
    assert "Traceback" not in server.log(), server.log()
