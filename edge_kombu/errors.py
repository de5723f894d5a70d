"""Exception tree shared by both sides, and its mapping to HTTP status codes.

The server raises these and answers ``{"error": <code>, "message": <text>}`` with
the class's status; the client turns that answer back into the same class.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Base class of every edge-kombu error."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str = "", *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def to_json(self) -> dict:
        return {"error": self.code, "message": self.message}


class InvalidRequest(EdgeError):
    """The request is malformed: bad JSON, wrong type, value out of range."""

    status = 400
    code = "invalid_request"


class AuthenticationFailed(EdgeError):
    """No credential, or one the server does not accept."""

    status = 401
    code = "unauthorized"


class Forbidden(EdgeError):
    """The credential is valid but may not do this."""

    status = 403
    code = "forbidden"


class NotFound(EdgeError):
    """A named queue, exchange, route or delivery tag does not exist."""

    status = 404
    code = "not_found"


class Conflict(EdgeError):
    """The request conflicts with the current state (e.g. a lease held by another session)."""

    status = 409
    code = "conflict"


class SessionClosed(EdgeError):
    """The consumer session was closed or expired; the client must open a new one."""

    status = 410
    code = "session_closed"


class PayloadTooLarge(EdgeError):
    """The request body is larger than the server accepts."""

    status = 413
    code = "payload_too_large"


class VersionMismatch(EdgeError):
    """Client and server speak different major protocol versions."""

    status = 426
    code = "version_mismatch"


class Unroutable(EdgeError):
    """A mandatory message matched no queue."""

    status = 422
    code = "unroutable"


class ServiceUnavailable(EdgeError):
    """The server cannot serve now (database down, shutting down); retry later."""

    status = 503
    code = "unavailable"


class EdgeConnectionError(EdgeError, ConnectionError):
    """The API could not be reached or answered with a server error.

    A subclass of :class:`ConnectionError`, so kombu and Celery treat it as a
    recoverable connection error and reconnect.
    """

    status = 503
    code = "connection_error"


class TooManyRequests(EdgeConnectionError):
    """Too many failed credentials, or connections, from this address (429); served again
    after ``Retry-After``. A connection error, so kombu and Celery retry with their back-off
    instead of stopping the worker."""

    status = 429
    code = "too_many_requests"


class PlainHTTPAnswer(EdgeConnectionError):
    """An ``https`` URL reached a server that answered the TLS handshake in plain HTTP: a
    configuration mistake, which no retry mends (never an answer of the API)."""

    code = "plain_http"


_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        AuthenticationFailed,
        Forbidden,
        NotFound,
        Conflict,
        SessionClosed,
        PayloadTooLarge,
        VersionMismatch,
        Unroutable,
        ServiceUnavailable,
        TooManyRequests,
    )
}


def error_from_response(status: int, body: object) -> EdgeError:
    """Build the exception for an error answer of the API."""
    code = message = None
    if isinstance(body, dict):
        code, message = body.get("error"), body.get("message")
    cls = _BY_CODE.get(code)
    if cls is None:
        if status >= 500:
            cls = EdgeConnectionError
        else:
            cls = next((c for c in _BY_CODE.values() if c.status == status), EdgeError)
    return cls(message or f"HTTP {status}", status=status)
