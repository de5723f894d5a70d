"""An HTTP adapter whose requests leave in one send: the head goes out with the body.

``http.client`` sends a request's line and headers with one ``send`` and its body with
another: two TCP segments per API call, and on the server a second wake-up and read for
the body it knows is coming (``Content-Length``). Each connection here holds the head
and sends it together with the first piece of the body; a request without a body, or
anything else done with the connection (reading the answer, closing it), sends or drops
what is held first, so bytes never reorder. TLS, timeouts and retries are urllib3's as
before: only the connection class differs.
"""

from __future__ import annotations

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool


class _HeadWithBody:
    """Mixed into urllib3's connections: ``endheaders`` holds the head for the next send."""

    _held: bytes | None = None
    _holding = False

    def endheaders(self, message_body=None, *, encode_chunked=False):
        # The head is the one send endheaders makes when it is given no body itself.
        self._holding = message_body is None
        try:
            super().endheaders(message_body, encode_chunked=encode_chunked)
        finally:
            self._holding = False

    def send(self, data):
        if self._holding:
            self._held = bytes(data)
            return
        if self._held is not None and isinstance(data, (bytes, bytearray, memoryview)):
            held, self._held = self._held, None
            data = held + bytes(data)
        self.flush_held()  # before a body that is a file
        super().send(data)

    def flush_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            super().send(held)

    def getresponse(self, *args, **kwargs):
        self.flush_held()  # a request without a body: its head alone
        return super().getresponse(*args, **kwargs)

    def close(self):
        self._held = None
        super().close()


class OneSendHTTPConnection(_HeadWithBody, HTTPConnection):
    pass


class OneSendHTTPSConnection(_HeadWithBody, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = OneSendHTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = OneSendHTTPSConnection


class OneSendAdapter(HTTPAdapter):
    """``requests``' adapter, its connections those of this module (not through proxies:
    the client uses none)."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}
