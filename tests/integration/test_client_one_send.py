"""The client sends each API request in one piece: its head together with its body
(:mod:`edge_kombu.transport.onesend`), against a real ``edge-kombu api``."""

from __future__ import annotations

import json

import pytest

from edge_kombu.transport import onesend
from edge_kombu.transport.client import EdgeClient

pytestmark = pytest.mark.sqlite_only


class _RecordingSocket:
    """A connected socket that notes what each ``sendall`` carried."""

    def __init__(self, sock, sent: list[bytes]) -> None:
        self._sock = sock
        self._sent = sent

    def sendall(self, data) -> None:
        self._sent.append(bytes(data))
        self._sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


@pytest.fixture
def sends(monkeypatch) -> list[bytes]:
    sent: list[bytes] = []
    connect = onesend.OneSendHTTPConnection.connect

    def recording_connect(self):
        connect(self)
        self.sock = _RecordingSocket(self.sock, sent)

    monkeypatch.setattr(onesend.OneSendHTTPConnection, "connect", recording_connect)
    return sent


def test_a_request_goes_out_in_one_send_with_its_body(api, token, sends):
    client = EdgeClient(api.url, token=token)
    try:
        client.call("queue/declare", {"name": "one-send"})
        for n in range(3):
            body = {"exchange": "", "routing_key": "one-send",
                    "message": {"body": str(n), "properties": {}, "headers": {}}}
            assert client.call("publish", body) == {"routed": 1}
        assert len(sends) == 4, sends
        for data in sends:
            head, _, sent_body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"POST ") and json.loads(sent_body)
        # Compact JSON: no spaces after the separators.
        assert b'"exchange":"","routing_key":"one-send"' in sends[-1]
        # A request without a body (GET) sends its head alone before reading the answer.
        assert client.health()["status"] == "ok"
        assert len(sends) == 5 and sends[-1].startswith(b"GET ") \
            and sends[-1].endswith(b"\r\n\r\n")
    finally:
        client.close()
