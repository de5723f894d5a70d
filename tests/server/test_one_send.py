"""A real ``edge-kombu api`` answers each response with one send system call
(:class:`~edge_kombu.server.connections.OneSend`), watched with ``strace``."""

from __future__ import annotations

import http.client
import re
import shutil
import signal
import subprocess
from urllib.parse import urlsplit

import psutil
import pytest

from edge_kombu.protocol import API_PATH
from tests.helpers import wait_for

pytestmark = [pytest.mark.sqlite_only,
              pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")]

REQUESTS = 3


def test_each_response_goes_out_in_one_send(api, tmp_path):
    worker = psutil.Process(api.pid).children()[0]  # gunicorn's worker serves the requests
    trace = tmp_path / "strace.txt"
    strace = subprocess.Popen(["strace", "-f", "-s", "16", "-e", "trace=sendto,sendmsg,write",
                               "-o", str(trace), "-p", str(worker.pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # strace writes its first line once it traces; a request made before would be missed.
        conn = http.client.HTTPConnection(urlsplit(api.url).hostname, urlsplit(api.url).port,
                                          timeout=10)
        wait_for(lambda: trace.exists() and trace.stat().st_size > 0
                 or _probe(conn), timeout=20, message="strace attached")
        for _ in range(REQUESTS):
            conn.request("GET", f"{API_PATH}/health")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
        conn.close()
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(timeout=10)
    responses = _responses(trace.read_text())[-REQUESTS:]
    assert len(responses) == REQUESTS, trace.read_text()
    assert responses == [1] * REQUESTS, f"sends per response:\n{trace.read_text()}"


def _probe(conn: http.client.HTTPConnection) -> bool:
    """One request while waiting for strace (its answer shows in the trace once attached)."""
    conn.request("GET", f"{API_PATH}/health")
    conn.getresponse().read()
    return False


def _responses(text: str) -> list[int]:
    """The sends of each HTTP response in the trace, in order: a response starts with a
    send beginning ``HTTP/1.1`` and goes on with the sends on that socket that follow."""
    calls = re.findall(r"(?:sendto|sendmsg|write)\((\d+), \"(.{0,8})", text)
    http_fds = {fd for fd, start in calls if start.startswith("HTTP/1.1")}
    responses: list[int] = []
    for fd, start in calls:
        if fd not in http_fds:
            continue
        if start.startswith("HTTP/1.1"):
            responses.append(1)
        elif responses:
            responses[-1] += 1
    return responses
