"""The OpenAPI document of the broker API, built from the protocol's schemas.

Every status a route can answer is listed with the error body every error has
(``{"error": ..., "message": ...}``); tests/test_openapi_fuzz.py holds the server to it.
"""

from __future__ import annotations

from functools import lru_cache

from edge_kombu import __version__
from edge_kombu.protocol import (
    API_PATH,
    BUNDLE_ARCHIVE_ROUTE,
    HEADER_PROTOCOL,
    MAX_BUNDLE_NAME,
    PROTOCOL_VERSION,
    REQUESTS,
    RESPONSES,
    ROUTE_ERRORS,
    SUMMARIES,
    protocol_major,
)

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    "required": ["error", "message"],
}
_ERRORS = {
    400: "Invalid request: the message names the field and the limit.",
    401: "Missing, unknown, revoked or expired credential.",
    403: "Outside the credential's scope: the message names what it may do.",
    404: "Unknown queue, exchange, route or delivery tag.",
    408: "The request's headers and body did not arrive within the request timeout.",
    409: "Conflict with the current state.",
    410: "The consumer session was closed or expired.",
    413: "Request body larger than the server accepts (with or without Content-Length).",
    422: "A mandatory message matched no queue.",
    426: "Client protocol major version differs from the server's.",
    429: "Too many requests (or failed credentials) from this client; see Retry-After.",
    503: "Database unavailable; retry.",
}
#: What every authenticated route may answer, whatever it does.
_EVERY_ROUTE = (400, 401, 403, 408, 413, 426, 429, 503)


def _errors(*codes: int) -> dict:
    return {
        str(code): {
            "description": _ERRORS[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in sorted(codes)
    }


def _ok(schema: dict, text: str = "Done.") -> dict:
    return {"200": {"description": text, "content": {"application/json": {"schema": schema}}}}


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    major = protocol_major(PROTOCOL_VERSION)
    protocol_header = {
        "name": HEADER_PROTOCOL,
        "in": "header",
        "required": True,
        "description": f"The client's protocol version; this server accepts {major}.x.",
        "schema": {"type": "string", "pattern": f"^{major}(\\.[0-9]+){{0,2}}$",
                   "example": PROTOCOL_VERSION},
    }
    paths = {
        f"{API_PATH}/health": {
            "get": {
                "operationId": "health",
                "summary": "Liveness; the only route without authentication.",
                "security": [],
                "responses": {
                    **_ok({"type": "object", "required": ["status", "version", "protocol"],
                           "properties": {"status": {"const": "ok"},
                                          "version": {"type": "string"},
                                          "protocol": {"type": "string"}}},
                          "The server is up."),
                    **_errors(429),
                },
            }
        },
        f"{API_PATH}/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {**_ok({"type": "object"}, "The OpenAPI document."),
                              **_errors(401, 403, 429)},
            }
        },
    }
    paths[f"{API_PATH}/{BUNDLE_ARCHIVE_ROUTE}"] = {
        "get": {
            "operationId": "bundles_archive",
            "summary": "A DAG bundle's archive (tar.gz), named by the sha256 bundles/resolve "
                       "gave; the worker checks the hash.",
            "parameters": [
                protocol_header,
                {"name": "name", "in": "query", "required": True,
                 "schema": {"type": "string", "minLength": 1, "maxLength": MAX_BUNDLE_NAME}},
                {"name": "sha256", "in": "query", "required": True,
                 "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"}},
            ],
            "responses": {
                "200": {"description": "The archive.",
                        "content": {"application/gzip": {"schema": {"type": "string",
                                                                    "format": "binary"}}}},
                "304": {"description": "Not modified (If-None-Match: the sha256)."},
                **_errors(*_EVERY_ROUTE, 404),
            },
        }
    }
    for route, schema in REQUESTS.items():
        paths[f"{API_PATH}/{route}"] = {
            "post": {
                "operationId": route.replace("/", "_"),
                "summary": SUMMARIES[route],
                "parameters": [protocol_header],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema}},
                },
                "responses": {
                    **_ok(RESPONSES[route]),
                    **_errors(*_EVERY_ROUTE, *ROUTE_ERRORS.get(route, ())),
                },
            }
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edge-kombu broker API",
            "version": __version__,
            "description": f"Wire protocol {PROTOCOL_VERSION}. Every route but health "
            "needs 'Authorization: Bearer <worker token or shared-secret JWT>'.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
    }
