"""The OpenAPI document of the broker API, built from the protocol's schemas."""

from __future__ import annotations

from functools import lru_cache

from edge_kombu import __version__
from edge_kombu.protocol import API_PATH, HEADER_PROTOCOL, PROTOCOL_VERSION, REQUESTS, SUMMARIES

_ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
    "required": ["error", "message"],
}
_ERRORS = {
    "400": "Invalid request: the message names the field and the limit.",
    "401": "Missing, unknown, revoked or expired credential.",
    "403": "Outside the credential's scope: the message names what it may do.",
    "404": "Unknown queue, exchange, route or delivery tag.",
    "409": "Conflict with the current state.",
    "410": "The consumer session was closed or expired.",
    "413": "Request body larger than the server accepts.",
    "426": "Client protocol major version differs from the server's.",
    "503": "Database unavailable; retry.",
}


@lru_cache(maxsize=1)
def openapi_document() -> dict:
    error_responses = {
        code: {
            "description": text,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code, text in _ERRORS.items()
    }
    paths = {
        f"{API_PATH}/health": {
            "get": {
                "summary": "Liveness; the only route without authentication.",
                "security": [],
                "responses": {"200": {"description": "The server is up."}},
            }
        }
    }
    for route, schema in REQUESTS.items():
        paths[f"{API_PATH}/{route}"] = {
            "post": {
                "operationId": route.replace("/", "_"),
                "summary": SUMMARIES[route],
                "parameters": [
                    {
                        "name": HEADER_PROTOCOL,
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "example": PROTOCOL_VERSION},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema}},
                },
                "responses": {
                    "200": {"description": "Done.", "content": {"application/json": {}}},
                    **error_responses,
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
