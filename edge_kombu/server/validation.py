"""Request parsing and validation against the JSON Schemas of :mod:`edge_kombu.protocol`.

Errors name the field and the rule it broke (``queues[0].name: at most 256
characters``), never echo the offending value in full.
"""

from __future__ import annotations

import json
import math

from flask.json.provider import DefaultJSONProvider
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from edge_kombu import errors
from edge_kombu.protocol import MAX_JSON_DEPTH, NO_NUL, REQUESTS

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
    if rule in ("minimum", "maximum"):
        text = f"{field}: must be {'>=' if rule == 'minimum' else '<='} {limit}"
        low, high = error.schema.get("minimum"), error.schema.get("maximum")
        if low is not None and high is not None:
            text += f" (allowed: {low} to {high})"
        return text
    if rule == "enum":
        return f"{field}: must be one of {', '.join(map(repr, limit))}"
    if rule == "pattern":
        if limit == NO_NUL:
            return f"{field}: must not contain the NUL character (\\u0000)"
        return f"{field}: must match {limit}"
    if rule == "anyOf" and "description" in error.schema:
        return f"{field}: {error.schema['description']}"
    if rule == "maxProperties":
        return f"{field}: at most {limit} fields allowed, got {len(error.instance)}"
    return f"{field}: {error.message[:200]}"


def _refuse_constant(name: str):
    raise errors.InvalidRequest(f"request body: {name} is not a JSON number")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise errors.InvalidRequest(f"request body: the number {text[:32]} is out of range")
    return number


def _check_text(text: str) -> None:
    # JSON's \\ud800-\\udfff escapes can make a lone surrogate, which no database stores.
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise errors.InvalidRequest(
                "request body: a string holds a lone surrogate (a \\ud800-\\udfff "
                "escape without its pair), which is not Unicode text") from None


def _check_parsed(value: object) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH and strings that are not Unicode text,
    level by level (no recursion, whatever the depth)."""
    level, depth = [value], 0
    while level:
        below, containers = [], False
        for item in level:
            if isinstance(item, str):
                _check_text(item)
            elif isinstance(item, dict):
                containers = True
                for key in item:
                    _check_text(key)
                below.extend(item.values())
            elif isinstance(item, list):
                containers = True
                below.extend(item)
        if containers:
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise _too_deep()
        level = below


def _too_deep() -> errors.InvalidRequest:
    return errors.InvalidRequest(
        f"request body: JSON nested deeper than {MAX_JSON_DEPTH} levels is not accepted")


def parse_json(data: str | bytes) -> object:
    """Parse a request body: standard JSON (no NaN or Infinity), at most
    :data:`~edge_kombu.protocol.MAX_JSON_DEPTH` levels deep, its strings Unicode text;
    else raise InvalidRequest."""
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise _too_deep() from None
    except json.JSONDecodeError as exc:
        raise errors.InvalidRequest(
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except UnicodeDecodeError:
        raise errors.InvalidRequest("request body is not valid JSON: not UTF-8") from None
    except ValueError:  # an integer of more digits than Python converts
        raise errors.InvalidRequest(
            "request body is not valid JSON: a number has too many digits") from None
    _check_parsed(value)
    return value


class RequestJSON(DefaultJSONProvider):
    """Flask's JSON with request bodies parsed by :func:`parse_json`."""

    def loads(self, s: str | bytes, **kwargs) -> object:
        return parse_json(s)


def validate(route: str, body: object) -> dict:
    """Return ``body`` if it is a valid request for ``route``, else raise InvalidRequest."""
    return check(_VALIDATORS[route], body)


def check(validator: Draft202012Validator, body: object) -> dict:
    """Return ``body`` if ``validator`` accepts it, else raise InvalidRequest naming why.

    Numbers the schema calls integers come back as ``int`` even when sent as ``5.0``
    (JSON Schema accepts that as an integer; Python's slices and keys would not)."""
    if not isinstance(body, dict):
        raise errors.InvalidRequest("request body must be a JSON object")
    error = next(iter(sorted(validator.iter_errors(body), key=lambda e: e.path)), None)
    if error is not None:
        raise errors.InvalidRequest(_describe(error))
    return _whole_numbers(validator.schema, body)


def _is_integer_schema(schema: dict) -> bool:
    kind = schema.get("type")
    return kind == "integer" or (isinstance(kind, list) and "integer" in kind)


def _whole_numbers(schema: object, value: object) -> object:
    """``value`` (already valid against ``schema``) with integral floats where the schema
    asks for integers turned into ``int``; nesting is bounded by MAX_JSON_DEPTH."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, float):
        return int(value) if _is_integer_schema(schema) else value
    if isinstance(value, dict):
        fields, rest = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            value[key] = _whole_numbers(fields.get(key, rest), item)
    elif isinstance(value, list) and "items" in schema:
        value[:] = [_whole_numbers(schema["items"], item) for item in value]
    return value
