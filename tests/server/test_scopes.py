"""Who may do what: every route against every kind of credential, on real API servers.

Site A (workers ``site-a-*``, queue ``qa``, may also publish to ``qa-callbacks``) and site
B (``site-b-*``, queue ``qb``) each hold a worker token; A's scope also reaches A's
workers through shared-secret JWTs (on a server with ``shared_secret_scope = worker``)
and OIDC JWTs (a local key pair, the JWKS in a file). A central token and central
shared-secret JWTs may do everything; revoked and expired tokens nothing. Each action
below is one of site A's, or one only the centre may do: the allowed credentials succeed,
the others get 403 naming what they may do (401 for revoked and expired).
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import secrets
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select

from edge_kombu.protocol import (
    AIRFLOW_TASK_NAME,
    JWT_ALGORITHM,
    JWT_AUDIENCE,
    JWT_ROUTE_CLAIM,
    jwt_signing_key,
)
from edge_kombu.server import models
from edge_kombu.server.config import ENV_SECRET
from tests.helpers import BIN, ROOT, wait_for
from tests.server.helpers import AUDIENCE, ISSUER, OIDCIssuer, error_message, post

TI = {"dag_id": "dag", "task_id": "task", "run_id": "run-1", "map_index": -1, "try_number": 1}

SITE_A = ("token-a", "jwt-worker-a", "oidc-a")
CENTRAL = ("central", "jwt-central")
ALL = (*SITE_A, "token-b", *CENTRAL, "revoked", "expired")


def task_message(task_id: str, group: str | None = None, *, airflow: bool = False) -> dict:
    body = json.dumps([[json.dumps({"ti": TI})], {}, {}]) if airflow else "[[], {}, {}]"
    return {"body": base64.b64encode(body.encode()).decode(), "content-type": "application/json",
            "headers": {"id": task_id, "task": AIRFLOW_TASK_NAME if airflow else "tests.add",
                        "group": group},
            "properties": {"body_encoding": "base64"}}


def mint_shared(secret: str, sub: str, route: str, lifetime: int = 60) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "aud": JWT_AUDIENCE, "iat": now, "exp": now + lifetime,
                       JWT_ROUTE_CLAIM: route}, jwt_signing_key(secret), algorithm=JWT_ALGORITHM)


@pytest.fixture
def world(api_factory, tokens, tmp_path):
    """Two API servers on one database, the credentials, and site A's and B's tasks."""
    secret = secrets.token_hex(16)
    issuer = OIDCIssuer(tmp_path)
    # The matrix sends revoked and expired credentials on purpose, far more than the rate
    # limit of failed credentials allows one address (tests/server/test_limits.py tests it).
    unlimited = {"EDGE_KOMBU_AUTH_FAILURE_LIMIT": "off"}
    env = {ENV_SECRET: secret, "EDGE_KOMBU_OIDC_ISSUER": ISSUER, **unlimited,
           "EDGE_KOMBU_OIDC_AUDIENCE": AUDIENCE, "EDGE_KOMBU_OIDC_JWKS_FILE": str(issuer.jwks_file)}
    main = api_factory(env=env)
    scoped = api_factory(env={ENV_SECRET: secret, "EDGE_KOMBU_SHARED_SECRET_SCOPE": "worker",
                              **unlimited})
    token_a = tokens.create("site-a-*", queues=["qa"], publish=["qa-callbacks"])
    token_b = tokens.create("site-b-*", queues=["qb"])
    central = tokens.create("scheduler", kind="central")
    revoked = tokens.create("gone-*", queues=["qa"])
    tokens.revoke("gone-*")
    expired = tokens.create("old-*", queues=["qa"], expires=0.5)

    fixed = {"token-a": token_a, "token-b": token_b, "central": central, "revoked": revoked,
             "expired": expired}
    creds = {
        **{kind: (main, lambda route, t=t: t) for kind, t in fixed.items()},
        "jwt-central": (main, lambda route: mint_shared(secret, "centre", route)),
        "jwt-worker-a": (scoped, lambda route: mint_shared(secret, "site-a-7", route)),
        "oidc-a": (main, lambda route: issuer.mint("site-a-9")),
    }

    def call(kind: str, route: str, body: dict):
        server, credential = creds[kind]
        return post(server, route, body, token=credential(route))

    def ok(kind: str, route: str, body: dict) -> dict:
        response = call(kind, route, body)
        assert response.status_code == 200, (kind, route, response.text)
        return response.json()

    # The centre's topology and tasks; site A takes ta (group g-a), site B tb (group g-b).
    for exchange, type_ in (("celery.pidbox", "fanout"), ("tasks", "direct")):
        ok("central", "exchange/declare", {"name": exchange, "type": type_})
    for queue in ("qa", "qb", "qa-callbacks"):
        ok("central", "queue/declare", {"name": queue})
    ok("central", "queue/bind", {"queue": "qa", "exchange": "tasks", "routing_key": "qa"})
    ok("central", "publish", {"exchange": "", "routing_key": "qa",
                              "message": task_message("ta", "g-a", airflow=True)})
    ok("central", "publish", {"exchange": "", "routing_key": "qb",
                              "message": task_message("tb", "g-b")})
    got_a = ok("token-a", "consume", {"session": uuid.uuid4().hex, "queues": [{"name": "qa"}]})
    got_b = ok("token-b", "consume", {"session": uuid.uuid4().hex, "queues": [{"name": "qb"}]})
    assert [m["message"]["headers"]["id"] for m in got_a["messages"]] == ["ta"]
    assert [m["message"]["headers"]["id"] for m in got_b["messages"]] == ["tb"]
    wait_for(lambda: call("expired", "hello", {}).status_code == 401, timeout=10,
             message="the short-lived token to expire")
    return {"call": call, "ok": ok, "issuer": issuer, "secret": secret, "main": main,
            "scoped": scoped, "tokens": fixed}


def _session_of(world, kind: str) -> str:
    session = uuid.uuid4().hex
    world["ok"](kind, "consume", {"session": session, "queues": [{"name": "qa"}], "wait": 0})
    return session


# Each action: (what, who may, route, body or a function of the world making it).
ACTIONS = [
    ("heartbeat as A's worker", SITE_A + CENTRAL, "worker/heartbeat",
     {"name": "site-a-1", "instance": "instance-a-1", "state": "idle", "queues": ["qa"],
      "slots_total": 1}),
    ("deregister A's worker", SITE_A + CENTRAL, "worker/deregister",
     {"name": "site-a-1", "instance": "instance-a-1"}),
    ("consume A's queue", SITE_A + CENTRAL, "consume",
     lambda w: {"session": uuid.uuid4().hex, "queues": [{"name": "qa"}], "wait": 0}),
    ("publish to A's queue", SITE_A + CENTRAL, "publish",
     {"exchange": "", "routing_key": "qa", "message": task_message("t-new")}),
    ("publish to A's callback queue", SITE_A + CENTRAL, "publish",
     {"exchange": "", "routing_key": "qa-callbacks", "message": task_message("t-cb")}),
    ("declare A's queue", SITE_A + CENTRAL, "queue/declare", {"name": "qa"}),
    ("read A's task result", SITE_A + CENTRAL, "results/get", {"key": "celery-task-meta-ta"}),
    ("write A's task result", SITE_A + CENTRAL, "results/set",
     {"key": "celery-task-meta-ta", "value": '{"status": "SUCCESS"}'}),
    ("count A's chord", SITE_A + CENTRAL, "results/incr", {"key": "chord-unlock-g-a"}),
    ("read A's group", SITE_A + CENTRAL, "results/mget", {"keys": ["celery-taskset-meta-g-a"]}),
    ("push A's task log", SITE_A + CENTRAL, "logs/push", {**TI, "offset": 0, "data": ""}),
    ("read A's task log", SITE_A + CENTRAL, "logs/read", TI),
    ("close A's session", SITE_A + CENTRAL, "session/close",
     lambda w: {"session": _session_of(w, "token-a")}),
    ("broadcast remote control", CENTRAL, "publish",
     {"exchange": "celery.pidbox", "routing_key": "", "message": task_message("ctl")}),
    ("purge a task queue", CENTRAL, "queue/purge", {"name": "qa-callbacks"}),
    ("delete a task queue", CENTRAL, "queue/delete", {"name": "qa-callbacks"}),
    ("delete an exchange", CENTRAL, "exchange/delete", {"name": "nothing"}),
    ("bind A's queue to another key", CENTRAL, "queue/bind",
     {"queue": "qa", "exchange": "tasks", "routing_key": "qb"}),
    ("read another result key", CENTRAL, "results/get", {"key": "anything"}),
]


def _verdict(kind: str, allowed: tuple, response) -> str | None:
    """What is wrong with ``response`` to ``kind`` (None: as it must be)."""
    if kind in allowed:
        return None if response.status_code == 200 else f"{response.status_code} {response.text}"
    expected = 401 if kind in ("revoked", "expired") else 403
    if response.status_code != expected:
        return f"{response.status_code} instead of {expected}: {response.text}"
    message = error_message(response, expected)
    if expected == 401:
        said = {"revoked": "unknown or revoked", "expired": "has expired"}[kind]
        return None if said in message else f"401 without {said!r}: {message}"
    named = ("is scoped to workers" in message and "may consume queues" in message
             and "central credential" in message)
    return None if named else f"403 without the scope: {message}"


def test_authorization_matrix(world):
    """Every action by every kind of credential; all wrong answers are reported at once."""
    wrong = []
    for what, allowed, route, body in ACTIONS:
        for kind in ALL:
            response = world["call"](kind, route, body(world) if callable(body) else body)
            problem = _verdict(kind, allowed, response)
            if problem:
                wrong.append(f"{what} by {kind}: {problem}")
            for secret in (*world["tokens"].values(), world["secret"]):
                assert secret not in response.text
    assert wrong == []


def test_hello_tells_the_scope(world):
    assert world["ok"]("token-a", "hello", {})["scope"] == {
        "kind": "worker", "workers": "site-a-*", "queues": ["qa"], "publish": ["qa-callbacks"]}
    assert world["ok"]("oidc-a", "hello", {})["principal"] == "site-a-*"
    assert world["ok"]("jwt-worker-a", "hello", {})["principal"] == "site-a-*"
    assert world["ok"]("central", "hello", {})["scope"] == {"kind": "central"}
    assert world["ok"]("jwt-central", "hello", {})["principal"] == "shared-secret:centre"


def test_site_b_cannot_touch_site_a(world):
    call = world["call"]
    refusals = {
        "consume": {"session": uuid.uuid4().hex, "queues": [{"name": "qa"}]},
        "results/set": {"key": "celery-task-meta-ta", "value": "forged"},
        "results/mget": {"keys": ["celery-task-meta-tb", "celery-task-meta-ta"]},
        "worker/heartbeat": {"name": "site-a-1", "instance": "forged-1", "state": "idle",
                             "queues": ["qa"], "slots_total": 1},
    }
    for route, body in refusals.items():
        message = error_message(call("token-b", route, body), 403)
        assert "'site-b-*'" in message and "['qb']" in message, message
    # A worker token cannot act in another credential's session, even knowing its id.
    session = _session_of(world, "token-a")
    for route in ("ack", "reject", "session/wake", "session/resume"):
        body = {"session": session}
        if route in ("ack", "reject"):
            body["delivery_tags"] = ["1.x"]
        if route == "session/resume":
            body["held"] = []
        assert "opened by another credential" in error_message(call("token-b", route, body), 403)
    message = error_message(call("token-b", "consume",
                                 {"session": session, "queues": [{"name": "qb"}]}), 403)
    assert "belongs to another credential" in message



def test_a_heartbeat_marks_running_only_its_own_jobs(world, sql):
    def beat(kind: str, worker: str) -> None:
        world["ok"](kind, "worker/heartbeat", {
            "name": worker, "instance": f"instance-{worker}", "state": "running",
            "queues": [], "slots_total": 1,
            "running": [{"id": "ta", "name": "t"}, {"id": "tb", "name": "t"}]})

    def job(task_id: str) -> tuple:
        with sql.connect() as conn:
            row = conn.execute(select(models.job.c.state, models.job.c.worker)
                               .where(models.job.c.task_id == task_id)).one()
        return tuple(row)

    beat("token-b", "site-b-1")
    assert job("ta") == ("received", None) and job("tb") == ("running", "site-b-1")
    beat("token-a", "site-a-1")
    assert job("ta") == ("running", "site-a-1") and job("tb") == ("running", "site-b-1")


def test_private_queues_belong_to_their_declarer(world):
    ok, call = world["ok"], world["call"]
    reply = f"{uuid.uuid4()}.reply.celery.pidbox"
    ok("token-a", "queue/declare", {"name": reply, "auto_delete": True})
    ok("token-a", "exchange/declare", {"name": "reply.celery.pidbox", "type": "direct"})
    ok("token-a", "queue/bind", {"queue": reply, "exchange": "reply.celery.pidbox",
                                 "routing_key": reply.split(".reply.")[0]})
    ok("token-a", "consume", {"session": uuid.uuid4().hex,
                              "queues": [{"name": reply, "no_ack": True}]})
    for route, body in (("queue/declare", {"name": reply}),
                        ("consume", {"session": uuid.uuid4().hex, "queues": [{"name": reply}]}),
                        ("queue/delete", {"name": reply}), ("queue/purge", {"name": reply})):
        assert error_message(call("token-b", route, body), 403)
    # A queue the centre declares is the centre's, whoever declared it first.
    ok("central", "queue/declare", {"name": reply})
    assert "consuming queue" in error_message(call("token-a", "consume", {
        "session": uuid.uuid4().hex, "queues": [{"name": reply, "no_ack": True}]}), 403)
    # Its own remote-control queue by its worker name; not another site's.
    ok("token-a", "queue/declare", {"name": "site-a-1@host.celery.pidbox"})
    ok("token-a", "queue/bind", {"queue": "site-a-1@host.celery.pidbox",
                                 "exchange": "celery.pidbox", "routing_key": ""})
    message = error_message(call("token-b", "queue/declare",
                                 {"name": "site-a-1@host.celery.pidbox"}), 403)
    assert "declaring queue 'site-a-1@host.celery.pidbox'" in message
    # A reply may go to a reply queue; a message to a task queue through it may not.
    ok("token-b", "publish", {"exchange": "reply.celery.pidbox",
                              "routing_key": reply.split(".reply.")[0],
                              "message": task_message("reply")})


def test_shared_secret_jwts_live_briefly(world):
    secret, main = world["secret"], world["main"]
    token = mint_shared(secret, "centre", "hello", lifetime=3600)
    message = error_message(post(main, "hello", {}, token=token), 401)
    assert "lives 3600s" in message and "more than the 300s" in message
    # A worker-scoped JWT names a worker the centre knows; others are refused.
    unknown = mint_shared(secret, "nobody", "hello")
    message = error_message(post(world["scoped"], "hello", {}, token=unknown), 403)
    assert "no worker entry names it" in message and "--no-token" in message


def test_oidc_tokens_are_checked(world, tmp_path):
    issuer, main = world["issuer"], world["main"]
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for token, expected in (
        (issuer.mint("site-a-1", audience="other"), "OIDC token rejected"),
        (issuer.mint("site-a-1", issuer="https://evil.example"), "OIDC token rejected"),
        (issuer.mint("site-a-1", key=stranger), "OIDC token rejected"),
        (issuer.mint("site-a-1", lifetime=-60), "OIDC token expired"),
    ):
        assert expected in error_message(post(main, "hello", {}, token=token), 401)
    message = error_message(post(main, "hello", {}, token=issuer.mint("nobody")), 403)
    assert "no worker entry names it" in message


def test_every_api_process_refuses_a_revoked_token_on_its_next_request(api_factory, tokens):
    """Each API process keeps the credentials it looked up in memory; a revocation made in
    another process (here the test's, as ``edge-kombu token revoke`` makes it) is refused
    by both processes on the very next request, and a token issued anew works at once."""
    servers = (api_factory(), api_factory())
    token = tokens.create("site-x-*", queues=["qx"])
    for _ in range(3):  # both have it in memory now
        for server in servers:
            assert post(server, "hello", {}, token=token).json()["principal"] == "site-x-*"
    tokens.revoke("site-x-*")
    for server in reversed(servers):
        assert "unknown or revoked" in error_message(post(server, "hello", {}, token=token), 401)
    renewed = tokens.create("site-x-*", queues=["qy"])
    for server in servers:
        assert post(server, "hello", {}, token=renewed).json()["scope"]["queues"] == ["qy"]
        assert post(server, "hello", {}, token=token).status_code == 401


def test_revocation_cuts_a_waiting_consume_and_hands_nothing_over(api, tokens):
    """A consume waiting when its token is revoked answers 401 within a second; a message
    published right after the revocation stays in the queue."""
    central = tokens.create("scheduler", kind="central")

    def depth(queue: str) -> dict:
        return post(api, "queue/declare", {"name": queue, "passive": True}, token=central).json()

    cut_after = []
    with ThreadPoolExecutor(1) as pool:
        for round_, publish in enumerate((True, False, True, True)):
            name, queue = f"site-r{round_}-*", f"qr{round_}"
            post(api, "queue/declare", {"name": queue}, token=central).raise_for_status()
            token = tokens.create(name, queues=[queue])
            body = {"session": uuid.uuid4().hex, "queues": [{"name": queue}], "wait": 10}
            future = pool.submit(lambda b=body, t=token: (post(api, "consume", b, token=t),
                                                          time.monotonic()))
            wait_for(lambda q=queue: depth(q)["consumers"] == 1, timeout=10,
                     message="the consume to wait")
            revoked_at = time.monotonic()
            tokens.revoke(name)
            if publish:
                post(api, "publish", {"exchange": "", "routing_key": queue,
                                      "message": task_message(f"after-{round_}")},
                     token=central).raise_for_status()
            response, answered = future.result(timeout=15)
            assert "revoked or expired while the consume waited" in error_message(response, 401)
            cut_after.append(answered - revoked_at)
            assert depth(queue) == {"name": queue, "messages": int(publish), "consumers": 0}
    print(f"waiting consumes cut {[round(t, 2) for t in cut_after]} s after revocation")
    assert max(cut_after) < 1.0, cut_after


def test_a_waiting_consume_ends_when_its_token_expires(api, tokens):
    """No periodic re-check: the wait is cut at the credential's expiry."""
    central = tokens.create("scheduler", kind="central")
    post(api, "queue/declare", {"name": "qe"}, token=central).raise_for_status()
    token = tokens.create("site-e-*", queues=["qe"], expires=1.5)
    started = time.monotonic()
    response = post(api, "consume", {"session": uuid.uuid4().hex, "queues": [{"name": "qe"}],
                                     "wait": 10}, token=token)
    assert "revoked or expired while the consume waited" in error_message(response, 401)
    assert time.monotonic() - started < 3.0


def test_a_rotated_identity_token_is_read_again_from_its_file(world, tmp_path):
    """The client re-reads a token file when it changes (Kubernetes rotates projected
    service-account tokens); the server checks each token it is sent."""
    from edge_kombu.transport.client import EdgeClient

    issuer, path = world["issuer"], tmp_path / "identity-token"
    path.write_text(issuer.mint("site-a-3"))
    client = EdgeClient(world["main"].url, token_file=str(path))
    try:
        assert client.call("hello")["principal"] == "site-a-*"
        path.write_text(issuer.mint("site-a-3", lifetime=-60) + "\n")
        error = None
        try:
            client.call("hello")
        except Exception as exc:  # noqa: BLE001 - the EdgeError is checked below
            error = exc
        assert error is not None and "OIDC token expired" in str(error)
        path.write_text(issuer.mint("site-b-3"))
        assert client.call("hello")["principal"] == "site-b-*"
    finally:
        client.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "edge-kombu"), *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_token_commands_with_scopes(api, db_url):
    created = _cli("token", "create", "--worker", "wisconsin-*", "--queues", "wq1,wq2",
                   "--publish", "callbacks", "--expires", "30d", "--db", db_url)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert created.stdout == token + "\n" and token.startswith("ekt_")
    scope = post(api, "hello", {}, token=token).json()["scope"]
    assert scope == {"kind": "worker", "workers": "wisconsin-*", "queues": ["wq1", "wq2"],
                     "publish": ["callbacks"]}
    central = _cli("token", "create", "--central", "flower", "--db", db_url)
    assert post(api, "hello", {}, token=central.stdout.strip()).json()["scope"] == {
        "kind": "central"}
    bare = _cli("token", "create", "--worker", "oidc-site-*", "--queues", "oq", "--no-token",
                "--db", db_url)
    assert bare.returncode == 0 and bare.stdout == "", bare.stderr
    for args, expected in (
        (("--worker", "x", "--central", "y"), "give one of --worker NAME, --central NAME or"),
        (("--central", "y", "--queues", "q"), "--queues, --publish, --team and --no-token are for"),
        (("--worker", "x", "--expires", "soon"), "--expires: 'soon' is not a duration"),
        (("--worker", "x", "--expires", "-5m"), "is not a duration"),
    ):
        refused = _cli("token", "create", *args, "--db", db_url)
        assert refused.returncode == 1 and expected in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    listing = _cli("token", "list", "--db", db_url).stdout.splitlines()
    assert listing[0].split() == ["NAME", "KIND", "QUEUES", "PUBLISH", "EXPIRES", "(UTC)",
                                  "LAST", "USED", "CREATED"]
    rows = {line.split()[0]: line.split() for line in listing[1:]}
    assert rows["wisconsin-*"][1:4] == ["worker", "wq1,wq2", "callbacks"]
    assert rows["wisconsin-*"][5] != "-"  # used by the hello above
    assert rows["flower"][1:4] == ["central", "-", "-"]
    assert rows["oidc-site-*"][1:5] == ["worker", "(no", "token)", "oq"]
    as_json = json.loads(_cli("token", "list", "--json", "--db", db_url).stdout)
    assert {row["name"] for row in as_json} == {"wisconsin-*", "flower", "oidc-site-*"}
    assert "ekt_" not in json.dumps(as_json)


def test_oidc_keys_from_a_jwks_url(api_factory, tokens, tmp_path):
    """The issuer's keys fetched over HTTP (PyJWKClient), as from a real issuer's jwks_uri."""
    issuer = OIDCIssuer(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    keys = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    serving = threading.Thread(target=keys.serve_forever, daemon=True)
    serving.start()
    try:
        api = api_factory(env={
            "EDGE_KOMBU_OIDC_ISSUER": ISSUER, "EDGE_KOMBU_OIDC_AUDIENCE": AUDIENCE,
            "EDGE_KOMBU_OIDC_JWKS_URL": f"http://127.0.0.1:{keys.server_port}/jwks.json"})
        tokens.create("site-u-*", queues=["qu"], issue_token=False)
        answer = post(api, "hello", {}, token=issuer.mint("site-u-1"))
        assert answer.status_code == 200 and answer.json()["principal"] == "site-u-*"
        (tmp_path / "other").mkdir()
        stranger = OIDCIssuer(tmp_path / "other")  # another key under the same kid
        assert "OIDC token rejected" in error_message(
            post(api, "hello", {}, token=stranger.mint("site-u-1")), 401)
    finally:
        keys.shutdown()
        keys.server_close()
