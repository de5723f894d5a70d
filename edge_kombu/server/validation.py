"""Request validation against the JSON Schemas of :mod:`edge_kombu.protocol`.

Errors name the field and the rule it broke (``queues[0].name: at most 256
characters``), never echo the offending value in full.
"""

from __future__ import annotations

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from edge_kombu import errors
from edge_kombu.protocol import REQUESTS

_VALIDATORS = {route: Draft202012Validator(schema) for route, schema in REQUESTS.items()}


def _field(error: ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "body"


def _describe(error: ValidationError) -> str:
    field = _field(error)
    rule, limit = error.validator, error.validator_value
    if rule == "required":
        missing = [k for k in limit if k not in (error.instance or {})]
        where = "" if field == "body" else f" in {field}"
        return f"missing required field {', '.join(map(repr, missing))}{where}"
    if rule == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return (
            f"{field}: unknown field(s) {', '.join(map(repr, extra))}; "
            f"allowed: {', '.join(allowed)}"
        )
    if rule == "type":
        kinds = limit if isinstance(limit, list) else [limit]
        return f"{field}: must be of type {' or '.join(kinds)}, got {type(error.instance).__name__}"
    if rule == "maxLength":
        return f"{field}: at most {limit} characters allowed, got {len(error.instance)}"
    if rule == "minLength":
        return f"{field}: at least {limit} character(s) required"
    if rule == "maxItems":
        return f"{field}: at most {limit} items allowed, got {len(error.instance)}"
    if rule == "minimum":
        return f"{field}: must be >= {limit}"
    if rule == "maximum":
        return f"{field}: must be <= {limit}"
    if rule == "enum":
        return f"{field}: must be one of {', '.join(map(repr, limit))}"
    if rule == "pattern":
        return f"{field}: must match {limit}"
    return f"{field}: {error.message[:200]}"


def validate(route: str, body: object) -> dict:
    """Return ``body`` if it is a valid request for ``route``, else raise InvalidRequest."""
    if not isinstance(body, dict):
        raise errors.InvalidRequest("request body must be a JSON object")
    error = next(iter(sorted(_VALIDATORS[route].iter_errors(body), key=lambda e: e.path)), None)
    if error is not None:
        raise errors.InvalidRequest(_describe(error))
    return body
