"""Hostile clients against a real API server process: failed credentials rate limited per
source address and per page user name (Flask-Limiter), requests that arrive too slowly cut
off, connections per source address capped. Loopback only: other source addresses are
127.0.0.2 and 127.0.0.3, which Linux routes to the loopback interface."""

from __future__ import annotations

import http.client
import json
import resource
import select
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests
from requests.adapters import HTTPAdapter

from edge_kombu.protocol import API_PATH, HEADER_PROTOCOL, PROTOCOL_VERSION
from edge_kombu.server.config import ServerConfig
from tests.helpers import wait_for
from tests.server.helpers import error_message

# Connection handling and rate limits do not depend on the database: they run once.
pytestmark = pytest.mark.sqlite_only

OTHER = "127.0.0.2"
ADMIN, VIEWER = ("admin", "admin-pass-1"), ("viewer", "viewer-pass-1")


class SourceAddressAdapter(HTTPAdapter):
    """Connections of a requests session made from a given local address."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def client_from(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", SourceAddressAdapter(address))
    return session


def hello(client: requests.Session, server, credential: str, **headers) -> requests.Response:
    return client.post(f"{server.url}{API_PATH}/hello", json={}, timeout=10,
                     headers={HEADER_PROTOCOL: PROTOCOL_VERSION,
                              "Authorization": f"Bearer {credential}", **headers})


def page(client: requests.Session, server, user: str, password: str) -> requests.Response:
    return client.get(f"{server.url}/ui/workers", auth=(user, password), timeout=10)


def retry_after(response: requests.Response) -> int:
    message = error_message(response, 429)
    seconds = int(response.headers["Retry-After"])
    assert 0 < seconds <= 61, response.headers
    assert f"retry in {seconds} s" in message, message
    return seconds


# -- failed credentials --------------------------------------------------------------------


def test_failed_tokens_get_429_per_address_while_other_addresses_are_served(api_factory, token):
    api = api_factory(env={"EDGE_KOMBU_AUTH_FAILURE_LIMIT": "3 per minute"})
    attacker, site = client_from("127.0.0.1"), client_from(OTHER)
    for _ in range(3):
        error_message(hello(attacker, api, "ekt_wrong-guess"), 401)
    refused = hello(attacker, api, "ekt_wrong-guess")
    retry_after(refused)
    assert "too many failed credentials from 127.0.0.1" in refused.json()["message"]
    assert "ekt_wrong-guess" not in refused.text

    # The blocked address is refused even with a good token: answering it differently
    # from a wrong one would tell a guesser it had guessed right.
    retry_after(hello(attacker, api, token))
    # Health probes are answered whatever the address did.
    assert attacker.get(f"{api.url}{API_PATH}/health", timeout=10).status_code == 200
    # Another address with a good credential is served, at once.
    started = time.monotonic()
    for _ in range(5):
        answer = hello(site, api, token)
        assert answer.status_code == 200, answer.text
    assert time.monotonic() - started < 2.0
    # ... and its own failures are counted apart.
    error_message(hello(site, api, "ekt_typo"), 401)
    assert hello(site, api, token).status_code == 200


def test_an_address_is_served_again_once_its_failures_age_out(api_factory, token):
    api = api_factory(env={"EDGE_KOMBU_AUTH_FAILURE_LIMIT": "2 per 2 seconds"})
    client = client_from("127.0.0.1")
    for _ in range(2):
        error_message(hello(client, api, "ekt_wrong"), 401)
    assert retry_after(hello(client, api, token)) <= 3
    wait_for(lambda: hello(client, api, token).status_code == 200, timeout=10,
             message="the address served again after the window")


def test_requests_without_a_credential_do_not_count(api_factory, token):
    """Only a presented, refused credential counts: the pages' sign-in prompt (a 401 to a
    browser that has not sent its password yet) does not."""
    api = api_factory(env={"EDGE_KOMBU_AUTH_FAILURE_LIMIT": "2 per minute",
                           "EDGE_KOMBU_UI_ADMIN": ":".join(ADMIN)})
    client = client_from("127.0.0.1")
    for _ in range(5):
        assert client.get(f"{api.url}/ui/workers", timeout=10).status_code == 401
        response = client.post(f"{api.url}{API_PATH}/hello", json={}, timeout=10,
                             headers={HEADER_PROTOCOL: PROTOCOL_VERSION})
        assert response.status_code == 401
    assert hello(client, api, token).status_code == 200
    assert page(client, api, *ADMIN).status_code == 200


def test_page_sign_in_is_limited_per_user_name_from_any_address(api_factory):
    api = api_factory(env={"EDGE_KOMBU_UI_ADMIN": ":".join(ADMIN),
                           "EDGE_KOMBU_UI_VIEWER": ":".join(VIEWER),
                           "EDGE_KOMBU_LOGIN_FAILURE_LIMIT": "3 per minute",
                           "EDGE_KOMBU_AUTH_FAILURE_LIMIT": "100 per minute"})
    # Guesses for one user name spread over three addresses, one of them at /metrics.
    for address in ("127.0.0.1", "127.0.0.2"):
        error_message(page(client_from(address), api, "admin", f"guess-{address}"), 401)
    error_message(client_from("127.0.0.3").get(f"{api.url}/metrics", auth=("admin", "guess"),
                                               timeout=10), 401)
    elsewhere = client_from("127.0.0.4")
    refused = page(elsewhere, api, *ADMIN)  # the right password, from a fresh address
    retry_after(refused)
    assert "too many failed sign-ins as 'admin'" in refused.json()["message"]
    assert ADMIN[1] not in refused.text
    # Other user names are not affected, from any address.
    assert page(elsewhere, api, *VIEWER).status_code == 200
    assert page(client_from("127.0.0.1"), api, *VIEWER).status_code == 200


def test_page_sign_in_is_limited_per_address_across_user_names(api_factory):
    api = api_factory(env={"EDGE_KOMBU_UI_ADMIN": ":".join(ADMIN),
                           "EDGE_KOMBU_AUTH_FAILURE_LIMIT": "3 per minute",
                           "EDGE_KOMBU_LOGIN_FAILURE_LIMIT": "off"})
    client = client_from("127.0.0.1")
    for name in ("root", "alice", "bob"):
        error_message(page(client, api, name, "password"), 401)
    retry_after(page(client, api, *ADMIN))
    assert page(client_from(OTHER), api, *ADMIN).status_code == 200


def test_behind_a_trusted_proxy_the_forwarded_address_counts(api_factory, token):
    """With EDGE_KOMBU_TRUSTED_PROXIES=1 every client comes from the proxy's address (here
    127.0.0.1) and is told apart by X-Forwarded-For; without it the header is not believed,
    so a client cannot dodge the limit by forging it."""
    proxied = api_factory(env={"EDGE_KOMBU_AUTH_FAILURE_LIMIT": "2 per minute",
                               "EDGE_KOMBU_TRUSTED_PROXIES": "1"})
    via_proxy = client_from("127.0.0.1")
    for _ in range(2):
        error_message(hello(via_proxy, proxied, "ekt_bad", **{"X-Forwarded-For": "203.0.113.7"}),
                      401)
    refused = hello(via_proxy, proxied, token, **{"X-Forwarded-For": "203.0.113.7"})
    retry_after(refused)
    assert "203.0.113.7" in refused.json()["message"]
    assert hello(via_proxy, proxied, token, **{"X-Forwarded-For": "198.51.100.1"}).ok

    direct = api_factory(env={"EDGE_KOMBU_AUTH_FAILURE_LIMIT": "2 per minute"})
    for forged in ("192.0.2.1", "192.0.2.2"):
        error_message(hello(via_proxy, direct, "ekt_bad", **{"X-Forwarded-For": forged}), 401)
    retry_after(hello(via_proxy, direct, token, **{"X-Forwarded-For": "192.0.2.3"}))


def test_limit_settings_are_checked():
    with pytest.raises(ValueError, match="EDGE_KOMBU_AUTH_FAILURE_LIMIT must be a rate limit"):
        ServerConfig("sqlite://", auth_failure_limit="ten a minute")
    with pytest.raises(ValueError, match="EDGE_KOMBU_MAX_CONNECTIONS_PER_ADDRESS"):
        ServerConfig("sqlite://", max_connections_per_address=-1)
    with pytest.raises(ValueError, match="EDGE_KOMBU_REQUEST_TIMEOUT"):
        ServerConfig("sqlite://", request_timeout=0)
    ServerConfig("sqlite://", auth_failure_limit="off", login_failure_limit="20/hour")


def test_limits_off_let_every_failure_through(api_factory, token):
    api = api_factory(env={"EDGE_KOMBU_AUTH_FAILURE_LIMIT": "off",
                           "EDGE_KOMBU_LOGIN_FAILURE_LIMIT": "off"})
    client = client_from("127.0.0.1")
    for _ in range(15):
        error_message(hello(client, api, "ekt_wrong"), 401)
    assert hello(client, api, token).status_code == 200


# -- connections ---------------------------------------------------------------------------


def raw_connection(server, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10,
                                    source_address=(source, 0))
    return sock


def seconds_until_closed(sock: socket.socket, *, trickle: bool = False,
                         timeout: float = 20.0) -> tuple[float, bytes]:
    """Seconds until the server closes ``sock`` (sending a byte every 0.5 s if ``trickle``),
    and what it sent before closing; closes ``sock``."""
    with sock:
        return _until_closed(sock, trickle, timeout)


def _until_closed(sock: socket.socket, trickle: bool, timeout: float) -> tuple[float, bytes]:
    started = time.monotonic()
    received = b""
    while time.monotonic() - started < timeout:
        readable, _, _ = select.select([sock], [], [], 0.5)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return time.monotonic() - started, received
            received += chunk
        elif trickle:
            sock.send(b"X")
    raise AssertionError(f"the server kept the connection open for {timeout} s")


def test_a_request_must_arrive_within_the_request_timeout(api_factory, token):
    api = api_factory(env={"EDGE_KOMBU_REQUEST_TIMEOUT": "2"})
    # A connection that sends nothing.
    took, said = seconds_until_closed(raw_connection(api))
    assert 1.5 < took < 6 and said == b"", (took, said)
    # Headers trickled a byte at a time: each byte is in time, the whole is not.
    sock = raw_connection(api)
    sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    took, said = seconds_until_closed(sock, trickle=True)
    assert 1.5 < took < 6 and said == b"", (took, said)
    # Headers in full, a body that stops: 408 naming the setting.
    sock = raw_connection(api)
    sock.sendall(f"POST {API_PATH}/hello HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}"
                 f"\r\n{HEADER_PROTOCOL}: {PROTOCOL_VERSION}\r\nContent-Type: application/json"
                 "\r\nContent-Length: 100\r\n\r\n{".encode())
    took, said = seconds_until_closed(sock)
    assert 1.5 < took < 6, took
    head, _, body = said.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), said
    assert "EDGE_KOMBU_REQUEST_TIMEOUT" in json.loads(body)["message"]


def test_long_polls_and_idle_keep_alive_outlast_the_request_timeout(api_factory, token):
    """A long-poll waits on the server after its body arrived, and a worker's connection may
    idle between requests up to the keep-alive time: neither is cut by the request timeout."""
    api = api_factory(env={"EDGE_KOMBU_REQUEST_TIMEOUT": "1"})
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=20)
    headers = {HEADER_PROTOCOL: PROTOCOL_VERSION, "Authorization": f"Bearer {token}",
               "Content-Type": "application/json"}

    def call(route: str, body: dict) -> dict:
        conn.request("POST", f"{API_PATH}/{route}", json.dumps(body), headers)
        response = conn.getresponse()
        payload = json.loads(response.read())
        assert response.status == 200, payload
        return payload

    call("queue/declare", {"name": "limits-q"})
    sock = conn.sock
    started = time.monotonic()
    answer = call("consume", {"session": uuid.uuid4().hex, "queues": [{"name": "limits-q"}],
                              "wait": 2.5})
    assert answer == {"messages": []} and time.monotonic() - started >= 2.4
    # Idle on the kept-alive connection for three times the request timeout: not closed.
    readable, _, _ = select.select([sock], [], [], 3.0)
    assert not readable, "the server closed an idle keep-alive connection"
    assert call("hello", {})["principal"]
    assert conn.sock is sock  # the same connection served all three requests
    conn.close()


def test_connections_per_address_are_capped(api_factory):
    api = api_factory(env={"EDGE_KOMBU_MAX_CONNECTIONS_PER_ADDRESS": "20"})
    held = [raw_connection(api, OTHER) for _ in range(20)]
    try:
        with raw_connection(api, OTHER) as over:  # answered at once, closed a while later
            said = over.recv(4096)
        assert said.startswith(b"HTTP/1.1 429"), said
        assert b"\r\nRetry-After: " in said
        assert b"too many connections from your address (at most 20 at once)" in said
        # Other addresses are served meanwhile.
        assert requests.get(f"{api.url}{API_PATH}/health", timeout=2).status_code == 200
        # One held connection let go: the address is served again.
        held.pop().close()
        wait_for(lambda: client_from(OTHER).get(f"{api.url}{API_PATH}/health",
                                                timeout=2).status_code == 200,
                 timeout=10, message="a connection from the capped address after one closed")
    finally:
        for sock in held:
            sock.close()


def test_no_cap_per_address_when_set_to_zero(api_factory):
    """Behind a reverse proxy all clients come from its address: the cap can be turned off."""
    api = api_factory(env={"EDGE_KOMBU_MAX_CONNECTIONS_PER_ADDRESS": "0"})
    held = [raw_connection(api, OTHER) for _ in range(30)]
    try:
        assert client_from(OTHER).get(f"{api.url}{API_PATH}/health",
                                      timeout=5).status_code == 200
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize(("soft", "hard", "fitting", "soft_after"), [
    (1024, 20000, 5000, 5256),  # raised to fit
    (1024, 2048, 2048 - 256, 2048),  # raised to the hard limit, fewer connections fit
])
def test_open_files_limit_is_raised_for_the_connections(soft, hard, fitting, soft_after):
    """In a child process with the given limits (the test's own stay as they are)."""
    _, our_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if our_hard != resource.RLIM_INFINITY and our_hard < hard:
        pytest.skip(f"this machine's hard limit on open files is {our_hard}")
    script = ("import resource; from edge_kombu.server.connections import raise_open_files_limit;"
              f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}));"
              "print(raise_open_files_limit(5000), resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    assert out == [str(fitting), str(soft_after)]


def test_a_worker_behind_a_blocked_address_waits_and_goes_on(api_factory, token, worker_factory):
    """Failures of a neighbour behind the same address block the address for the window:
    the worker there gets 429 (a connection error to kombu), keeps running, and takes tasks
    again once the window has passed."""
    from celery import Celery

    api = api_factory(env={"EDGE_KOMBU_AUTH_FAILURE_LIMIT": "3 per 20 seconds"})
    broker_url = api.url.replace("http://", f"edge+http://:{token}@")
    worker = worker_factory(broker_url, name="neighbour")
    client = client_from("127.0.0.1")
    for _ in range(3):
        error_message(hello(client, api, "ekt_stale-token"), 401)
    wait_for(lambda: "too many failed credentials from 127.0.0.1" in worker.log(), timeout=30,
             message="the worker refused with 429")
    app = Celery("limits_client", broker=broker_url, backend=broker_url, set_as_current=False)
    app.conf.update(task_acks_late=True, broker_connection_retry=False)
    try:
        assert wait_for(lambda: app.send_task("tests.celery_app.add", (2, 3)).get(timeout=10) == 5,
                        timeout=60, message="a task run after the window")
    finally:
        app.close()
    assert worker.alive()
