"""Scale-out behind a real load balancer: Debian's nginx, running the shipped
deploy/nginx/edge-kombu.conf (its ports, paths and a test certificate put in), in front of
two ``edge-kombu api`` servers (two ports standing for two hosts) on one PostgreSQL
database, with real Celery workers connecting through nginx over TLS.

* a publish answered by one server wakes a consume long-polling on the other at once;
* tasks flow through both servers (nginx's log names the server of every request; each
  server's own access log counts what it answered);
* one server is SIGKILLed mid-stream: the workers carry on through the other, nothing
  lost and nothing run twice (tests/faults.py counts every execution per task id).

Runs in the PostgreSQL env only (``postgres_only``): several server processes on one
SQLite file is not a deployment.
"""

from __future__ import annotations

import re
import shutil
import signal
import statistics
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import pytest
import requests

from edge_kombu.protocol import MAX_WAIT_SECONDS
from edge_kombu.server import models
from edge_kombu.transport.client import EdgeClient
from tests.conftest import IN_CI
from tests.faults import SteadyPublisher, Tally, publisher_app, report, settle
from tests.helpers import ROOT, Process, free_port, messages_left, wait_for

pytestmark = [pytest.mark.postgres_only, pytest.mark.timeout(150)]

NGINX = Path("/usr/sbin/nginx")
SHIPPED = ROOT / "deploy" / "nginx" / "edge-kombu.conf"
QUEUE = "celery"
#: Short leases so that a consume cut by the kill costs seconds, not the default 30 s; the
#: API believes nginx's X-Forwarded-For, and caps no address (all come from nginx).
API_ENV = {"EDGE_KOMBU_LEASE_TIMEOUT": "15", "EDGE_KOMBU_MAX_WAIT": "5",
           "EDGE_KOMBU_REAP_INTERVAL": "0.5", "EDGE_KOMBU_TRUSTED_PROXIES": "1",
           "EDGE_KOMBU_MAX_CONNECTIONS_PER_ADDRESS": "0"}
SERVER_WAIT = float(API_ENV["EDGE_KOMBU_MAX_WAIT"])


def render(shipped: str, *, upstreams: list[int], port: int, cert: Path, key: Path,
           access_log: Path) -> str:
    """The shipped config with the test's servers, port, certificate and log; every
    replaced line must be found, so a reshaped file fails here rather than go untested."""
    replacements = [
        (r"(?m)^    server 10\.0\.0\.11:8080 ", f"    server 127.0.0.1:{upstreams[0]} "),
        (r"(?m)^    server 10\.0\.0\.12:8080 ", f"    server 127.0.0.1:{upstreams[1]} "),
        (r"(?m)^    listen 443 ssl;", f"    listen 127.0.0.1:{port} ssl;"),
        (r"(?m)^    ssl_certificate .*;", f"    ssl_certificate {cert};"),
        (r"(?m)^    ssl_certificate_key .*;", f"    ssl_certificate_key {key};"),
        (r"(?m)^    access_log \S+ edge_kombu;", f"    access_log {access_log} edge_kombu;"),
    ]
    for pattern, line in replacements:
        shipped, n = re.subn(pattern, line.replace("\\", "\\\\"), shipped)
        assert n == 1, f"{SHIPPED.name}: expected one line matching {pattern!r}, found {n}"
    return shipped


class Nginx(Process):
    """``nginx -p DIR -c nginx.conf -g 'daemon off; pid …;'``: the shipped file included in
    a minimal main config of the test's own, logs and temp files under ``DIR``."""

    def __init__(self, tmp: Path, site: str, port: int) -> None:
        self.dir = tmp / "nginx"
        self.dir.mkdir()
        self.port = port
        (self.dir / "edge-kombu.conf").write_text(site)
        (self.dir / "nginx.conf").write_text(
            f"worker_processes 1;\n"
            f"error_log {self.dir / 'error.log'} info;\n"
            f"events {{ worker_connections 1024; }}\n"
            f"http {{\n"
            f"    client_body_temp_path {self.dir / 'body'};\n"
            f"    proxy_temp_path {self.dir / 'proxy'};\n"
            f"    fastcgi_temp_path {self.dir / 'fastcgi'};\n"
            f"    uwsgi_temp_path {self.dir / 'uwsgi'};\n"
            f"    scgi_temp_path {self.dir / 'scgi'};\n"
            f"    include {self.dir / 'edge-kombu.conf'};\n"
            f"}}\n")
        super().__init__(
            [str(NGINX), "-p", str(self.dir), "-e", str(self.dir / "error.log"),
             "-c", str(self.dir / "nginx.conf"),
             "-g", f"daemon off; pid {self.dir / 'nginx.pid'};"],
            tmp / "nginx.out")

    def check(self) -> None:
        result = subprocess.run([*self.args, "-t"], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"nginx -t refused the config:\n{result.stderr}"

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Logged(NamedTuple):
    """One request in nginx's log (``log_format edge_kombu``)."""

    route: str
    status: int
    servers: list[str]  # each server tried, in order
    statuses: list[str]  # what each answered


LOG_LINE = re.compile(r'"(?:GET|POST) /api/v1/(\S+) HTTP/[\d.]+" (\d+) \d+ upstream=(.+) '
                      r'upstream_status=(.+) request_time=')


def logged(access_log: Path) -> list[Logged]:
    if not access_log.exists():
        return []
    found = []
    for line in access_log.read_text().splitlines():
        match = LOG_LINE.search(line)
        assert match, f"nginx logged an unexpected line: {line}"
        route, status, servers, statuses = match.groups()
        found.append(Logged(route, int(status), re.split(r", | : ", servers),
                            re.split(r", | : ", statuses)))
    return found


def upstream_of(access_log: Path, route: str) -> list[str]:
    """The server that answered each request for ``/api/v1/<route>``, in order (for a
    request tried on two servers, the last one)."""
    return [x.servers[-1] for x in logged(access_log) if x.route == route]


def served(api) -> int:
    """Requests of the edge API an API server logged as answered (its access log)."""
    return len(re.findall(r'"POST /api/v1/', api.log()))


@pytest.fixture
def certificate(tmp_path) -> tuple[Path, Path]:
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def balanced(api_factory, certificate, tmp_path):
    """Two API servers on the test's PostgreSQL database and nginx in front of them."""
    if not NGINX.exists() or shutil.which("openssl") is None:
        message = "Debian's nginx (/usr/sbin/nginx) and openssl are needed"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    servers = [api_factory(env=API_ENV, extra=["--access-log"]) for _ in range(2)]
    cert, key = certificate
    access_log = tmp_path / "nginx-access.log"
    port = free_port()
    site = render(SHIPPED.read_text(), upstreams=[s.port for s in servers], port=port,
                  cert=cert, key=key, access_log=access_log)
    nginx = Nginx(tmp_path, site, port)
    nginx.check()
    nginx.start()
    url = f"https://127.0.0.1:{port}"

    def up() -> bool:
        assert nginx.alive(), f"nginx exited:\n{nginx.log()}\n{nginx.error_log()}"
        return requests.get(f"{url}/api/v1/health", verify=str(cert), timeout=2).ok

    wait_for(up, timeout=20, message="nginx in front of the API servers")
    yield servers, nginx, url, cert, access_log
    nginx.stop()


def test_two_api_servers_behind_nginx(balanced, token, sql, worker_factory, tmp_path):
    servers, nginx, url, ca, access_log = balanced
    a, b = servers
    upstream_a, upstream_b = f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"

    # -- a long-poll runs its full wait through nginx --------------------------------------
    # nginx waits for an answer longer than any consume may wait on a server (the
    # protocol's largest wait), and one consume that waits the whole server-side wait
    # (EDGE_KOMBU_MAX_WAIT here) with nothing to deliver is answered, empty, not cut.
    read_timeout = re.search(r"proxy_read_timeout (\d+)s;", SHIPPED.read_text()).group(1)
    assert int(read_timeout) > MAX_WAIT_SECONDS + 10, read_timeout
    idle = EdgeClient(url, token=token, verify=str(ca))
    idle.call("queue/declare", {"name": "idle"})
    idle_pool = ThreadPoolExecutor(1)
    idle_poll = idle_pool.submit(lambda: (time.monotonic(), idle.call("consume", {
        "session": uuid.uuid4().hex, "queues": [{"name": "idle"}], "wait": MAX_WAIT_SECONDS},
        timeout=MAX_WAIT_SECONDS + 30), time.monotonic()))

    # -- a publish on one server wakes a consume long-polling on the other -----------------
    consumer = EdgeClient(url, token=token, verify=str(ca))
    publisher = EdgeClient(url, token=token, verify=str(ca))
    direct = EdgeClient(a.url, token=token)  # watches the database, past nginx
    cross, same = [], []
    try:
        with ThreadPoolExecutor(1) as pool:
            for i in range(20):
                queue = f"wake-{i}"
                publisher.call("queue/declare", {"name": queue})

                def consume(q=queue):
                    answer = consumer.call("consume", {
                        "session": uuid.uuid4().hex, "queues": [{"name": q}], "wait": 5},
                        timeout=35)
                    return answer, time.monotonic()

                future = pool.submit(consume)
                wait_for(lambda q=queue: direct.call(
                    "queue/declare", {"name": q, "passive": True})["consumers"] == 1,
                    timeout=10, message="the consume waiting on a server")
                assert not future.done(), "the consume did not wait"
                published = time.monotonic()
                publisher.call("publish", {"exchange": "", "routing_key": queue, "message": {
                    "body": f"m{i}", "content-type": "text/plain", "headers": {},
                    "properties": {}}})
                answer, answered = future.result(timeout=10)
                assert [m["message"]["body"] for m in answer["messages"]] == [f"m{i}"]
                wait_for(lambda n=i + 1: len(upstream_of(access_log, "consume")) == n,
                         timeout=5, message="nginx to log the consume")
                waited_on = upstream_of(access_log, "consume")[-1]
                published_on = upstream_of(access_log, "publish")[-1]
                (cross if waited_on != published_on else same).append(answered - published)
                if len(cross) >= 7:
                    break
        sent, answer, answered = idle_poll.result(timeout=SERVER_WAIT + 30)
    finally:
        idle_pool.shutdown(wait=True)
        for client in (consumer, publisher, direct, idle):
            client.close()
    assert answer == {"messages": []}
    assert answered - sent >= SERVER_WAIT - 0.5, answered - sent
    print(f"wake across servers through nginx: {[round(t * 1000, 1) for t in cross]} ms "
          f"(same server: {[round(t * 1000, 1) for t in same]} ms)")
    assert len(cross) >= 7, f"only {len(cross)} of {len(cross) + len(same)} consumes were " \
                            "woken by a publish on the other server"
    assert statistics.median(cross) < 0.1, cross
    assert max(cross) < 0.5, cross

    # -- tasks flow through both servers; one is killed mid-stream --------------------------
    broker = url.replace("https://", f"edge+https://:{token}@")
    ssl_env = {"EDGE_TEST_USE_SSL": f"{ca}||"}
    workers = [worker_factory(broker, name=f"lb{i}", concurrency=4, env=ssl_env,
                              wait_ready=False) for i in range(2)]
    for worker in workers:  # started together: on a busy machine each takes seconds
        wait_for(worker.ready, timeout=60, message=f"worker {worker.name} ready")
    out = tmp_path / "executions"
    app = publisher_app(broker)
    app.conf.broker_use_ssl = {"ca_certs": str(ca)}
    stream = SteadyPublisher(app, out, name="lb", count=400, rate=40, seconds=0.02)
    tally = Tally(out, lambda: stream.ids)
    stream.start()
    try:
        wait_for(lambda: tally.completed >= 120, timeout=60, message="a stream under way")
        before = {server: served(server) for server in servers}
        # The workers' own requests (consumes, acks, heartbeats) reach both servers.
        assert all(before.values()), before
        routed = upstream_of(access_log, "ack") + upstream_of(access_log, "consume")
        assert {upstream_a, upstream_b} <= set(routed), set(routed)

        a.kill(signal.SIGKILL)
        a.proc.wait(10)
        killed, killed_at_line = time.time(), len(access_log.read_text().splitlines())
        completed_at_kill = tally.completed

        stream.finish(timeout=60)
        settled = settle(tally, lambda: messages_left(sql, models.message.c.queue == QUEUE),
                         timeout=45)
    finally:
        stream.stop()
        app.close()
    line = report("nginx, 2 API servers, one SIGKILLed", tally, tally.recovery(killed))
    print(f"requests answered: A {before[a]} before its kill, B {served(b)} in all; "
          f"{completed_at_kill} tasks done at the kill")
    assert settled and tally.lost == 0, f"{line}: tasks lost or messages left unsettled"
    assert tally.run_twice == 0, line
    assert tally.completed > completed_at_kill, "nothing ran after the kill"
    for worker in workers:
        assert worker.alive(), f"worker {worker.name} exited:\n{worker.log()[-3000:]}"
    # After the kill every request answered 200 was answered by B; through the whole run
    # nothing but 200, but the 502s of requests A held or was sent as it died: a timeout
    # under a long-poll (504) or a refused body (413) would show here.
    requests_logged = logged(access_log)
    ok_after = {x.servers[-1] for x in requests_logged[killed_at_line:] if x.status == 200}
    assert ok_after == {upstream_b}, ok_after
    failed = [x for x in requests_logged if x.status != 200]
    assert all(x.status == 502 and set(x.servers) == {upstream_a} for x in failed), failed
    assert "[emerg]" not in nginx.error_log()
