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
from edge_kombu.server.manage import (
    ACTIONS,
    BULK,
    MANAGE_PATH,
    QUERIES,
    TOKEN_CREATE,
)
from edge_kombu.server.manage import (
    SUMMARIES as MANAGE_SUMMARIES,
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
    414: "Request line (path and query string) longer than the server accepts "
         "(4094 bytes with `edge-kombu api`).",
    431: "Request headers over the server's limits (100 fields of 8190 bytes with "
         "`edge-kombu api`).",
    422: "A mandatory message matched no queue.",
    426: "Client protocol major version differs from the server's.",
    429: "Too many requests (or failed credentials) from this client; see Retry-After.",
    503: "Database unavailable; retry.",
}
#: What every authenticated route may answer, whatever it does.
_EVERY_ROUTE = (400, 401, 403, 408, 413, 414, 426, 429, 431, 503)


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
                    **_errors(414, 429, 431),
                },
            }
        },
        f"{API_PATH}/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {**_ok({"type": "object"}, "The OpenAPI document."),
                              **_errors(401, 403, 414, 429, 431)},
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
    paths.update(manage_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edge-kombu broker API",
            "version": __version__,
            "description": f"Wire protocol {PROTOCOL_VERSION}. Every route but health "
            "needs 'Authorization: Bearer <worker token or shared-secret JWT>'; the "
            f"management routes ({MANAGE_PATH}/) need an admin token or the pages' admin "
            "user (HTTP Basic, or Airflow's session when mounted there).",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "basic": {"type": "http", "scheme": "basic"}},
        },
        "security": [{"bearer": []}],
    }


# -- the management API ------------------------------------------------------------------------

#: What every management route may answer (no protocol header there: 426 never).
_MANAGE_EVERY = (400, 401, 403, 408, 413, 414, 429, 431, 503)
_OBJECT = {"type": "object"}
_WORKER = {"type": "object", "required": ["name", "state", "queues", "maintenance"]}
_NAME_PARAM = {"name": "name", "in": "path", "required": True,
               "schema": {"type": "string", "minLength": 1, "maxLength": 256}}
_BULK_RESULT = {"type": "object", "required": ["results"], "properties": {"results": {
    "type": "array", "items": {"type": "object", "required": ["name", "ok"], "properties": {
        "name": {"type": "string"}, "ok": {"type": "boolean"},
        "worker": {"type": ["object", "null"], "description": "null once removed"},
        "error": {"type": "string"}, "message": {"type": "string"}}}}}}


def _manage(operation: str, summary: str, ok: dict, *codes: int, body: dict | None = None,
            query: str | None = None, name: bool = False, status: int = 200) -> dict:
    spec = {
        "operationId": f"manage_{operation}",
        "summary": summary,
        "tags": ["manage"],
        "security": [{"bearer": []}, {"basic": []}],
        "responses": {
            str(status): {"description": "Done.",
                          "content": {"application/json": {"schema": ok}}},
            **_errors(*_MANAGE_EVERY, *codes),
        },
    }
    parameters = [_NAME_PARAM] if name else []
    for param, (schema, _parse) in QUERIES.get(query, {}).items():
        parameters.append({"name": param, "in": "query", "required": False, "schema": schema})
    if parameters:
        spec["parameters"] = parameters
    if body is not None:
        spec["requestBody"] = {"required": True,
                               "content": {"application/json": {"schema": body}}}
    return spec


def _object(**required: dict) -> dict:
    return {"type": "object", "required": list(required), "properties": required}


def manage_paths() -> dict:
    """The routes of :mod:`edge_kombu.server.manage` with every status each answers."""
    workers = {"type": "array", "items": _WORKER}
    paths = {
        f"{MANAGE_PATH}/workers": {"get": _manage(
            "workers_list", "Workers, filtered by state, name pattern or queue.",
            _object(workers=workers), query="workers")},
        f"{MANAGE_PATH}/workers/{{name}}": {"get": _manage(
            "worker_get", "One worker.", _object(worker=_WORKER), 404, name=True)},
        f"{MANAGE_PATH}/queues": {"get": _manage(
            "queues", "The queues: depth, age, consumers, serving workers, problems.",
            _object(queues={"type": "array", "items": _OBJECT}), query="queues")},
        f"{MANAGE_PATH}/jobs": {"get": _manage(
            "jobs", "Jobs, newest first, with the Jobs page's filters; page on with 'next'.",
            _object(jobs={"type": "array", "items": _OBJECT},
                    next={"type": ["integer", "null"]}), query="jobs")},
        f"{MANAGE_PATH}/tokens": {
            "get": _manage("tokens_list", "Credentials and their scopes (never the tokens).",
                           _object(tokens={"type": "array", "items": _OBJECT})),
            "post": _manage("token_create", "Issue a credential; the answer holds its token "
                            "(shown once).", _object(name={"type": "string"},
                                                     kind={"type": "string"},
                                                     token={"type": ["string", "null"]}),
                            409, body=TOKEN_CREATE, status=201),
        },
        f"{MANAGE_PATH}/tokens/{{name}}": {"delete": _manage(
            "token_revoke", "Revoke a credential; effective on its next request.",
            _object(revoked={"type": "string"}), 404, name=True)},
    }
    for action, body in ACTIONS.items():
        operation = action.replace("-", "_")
        ok = _object(removed={"type": "string"}) if action == "remove" else _object(
            worker=_WORKER)
        paths[f"{MANAGE_PATH}/workers/{{name}}/{action}"] = {"post": _manage(
            f"worker_{operation}", MANAGE_SUMMARIES[action], ok, 404, 409, body=body, name=True)}
        paths[f"{MANAGE_PATH}/bulk/workers/{action}"] = {"post": _manage(
            f"bulk_{operation}", f"{MANAGE_SUMMARIES[action]} For each named worker; the "
            "answer says for each whether it was done or why not.", _BULK_RESULT,
            body=BULK[action])}
    return paths
