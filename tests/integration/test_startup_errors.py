"""A plain ``celery -A app worker`` whose broker link cannot work says why in one line and
exits 1 (real API server, real worker processes); the https-against-http hint."""

from __future__ import annotations

import pytest

from edge_kombu import errors
from edge_kombu.transport.client import EdgeClient
from tests.helpers import wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.sqlite_only]


def ended_with_one_line(worker, fragment: str) -> str:
    """The worker exited 1 and its output holds ``fragment`` on one line, no traceback."""
    wait_for(lambda: not worker.alive(), timeout=60, message=f"worker {worker.name} exits")
    log = worker.log()
    assert worker.proc.returncode == 1, log
    assert "Traceback" not in log and "Unrecoverable error" not in log, log
    [line] = [line for line in log.splitlines() if fragment in line]
    return line


def test_a_rejected_token_ends_a_plain_worker_in_one_line(api, worker_factory):
    url = api.url.replace("http://", "edge+http://:not-a-token@")
    worker = worker_factory(url, name="badtoken", wait_ready=False)
    line = ended_with_one_line(worker, "rejected the credential")
    assert line.startswith(f"celery worker badtoken@localhost: the edge API at {api.url} "
                           "rejected the credential: "), line


def test_https_against_a_plain_http_api_says_so(api, token, worker_factory):
    url = api.url.replace("http://", f"edge+https://:{token}@")
    worker = worker_factory(url, name="tls", wait_ready=False)
    line = ended_with_one_line(worker, "the API answered plain HTTP")
    assert f"use edge+{api.url} or serve TLS" in line

    client = EdgeClient(url.removeprefix("edge+"), connect_retries=0)
    with pytest.raises(errors.PlainHTTPAnswer, match="the API answered plain HTTP: use "
                       "edge\\+http://"):
        client.call("hello")


def test_an_unreachable_api_is_retried_not_fatal(api, token, worker_factory):
    """As with any broker: Celery retries the connection, one line per attempt."""
    url = api.url.replace("http://", f"edge+http://:{token}@")
    api.stop()
    worker = worker_factory(url, name="later", wait_ready=False)
    wait_for(lambda: "Cannot connect to" in worker.log() or not worker.alive(), timeout=60,
             message="a connection retry")
    assert worker.alive(), worker.log()
    api.start()
    wait_for(worker.ready, timeout=60, message="worker ready once the API is up")
