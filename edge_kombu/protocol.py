"""The wire contract between edge workers and the edge API (stdlib only).

Both sides import this module: the routes, the JSON shapes of every request
(as JSON Schema, used by the server to validate and to publish its OpenAPI
document), the header names and the protocol version.

Every route is ``POST <prefix>/api/v1/<name>`` with a JSON object body and a
JSON object answer, except ``GET /api/v1/health`` (the only unauthenticated
route) and ``GET /api/v1/openapi.json``.
"""

from __future__ import annotations

import hashlib
import re

#: Version of edge-kombu, which is also the version of its wire protocol: peers with the
#: same major version interoperate; a different minor or patch version is reported as a
#: warning in the worker's status.
VERSION = "1.0.0"
PROTOCOL_VERSION = VERSION

#: Request header carrying the client's protocol version.
HEADER_PROTOCOL = "X-Edge-Kombu-Protocol"
#: Request header naming the worker (informational, shown in server logs).
HEADER_CLIENT_NAME = "X-Edge-Kombu-Client"

#: Shared-secret mode: short-lived JWTs signed with ``[core] internal_api_secret_key``.
JWT_AUDIENCE = "edge-kombu"
JWT_ALGORITHM = "HS512"
#: JWT claim binding a token to the one route it was minted for.
JWT_ROUTE_CLAIM = "route"
#: Lifetime of a minted JWT, in seconds.
JWT_LIFETIME = 60
#: Shortest shared secret accepted.
MIN_SECRET_LENGTH = 16

#: URL path of the API below the configured prefix.
API_PATH = "/api/v1"

#: Longest queue, exchange or routing key name, as in Airflow's edge executor.
MAX_NAME_LENGTH = 256
#: Longest result key.
MAX_KEY_LENGTH = 255
#: Most keys in one ``results/mget``.
MAX_MGET_KEYS = 10_000
#: Most messages one consume may hand out.
MAX_BATCH = 1_000
#: Most delivery tags a resuming consumer may say it still holds (``session/resume``).
MAX_HELD = 10 * MAX_BATCH
#: Longest a consume may wait on the server, in seconds.
MAX_WAIT_SECONDS = 60.0
#: Longest dag_id, task_id or run_id (Airflow's ``ID_LEN``).
MAX_ID_LENGTH = 250
#: Largest log chunk one ``logs/push`` may carry, in characters (the worker's
#: ``[edge] push_log_chunk_size`` is capped to it).
MAX_LOG_CHUNK = 1_048_576
#: Most characters one ``logs/read`` returns.
MAX_LOG_READ = 8 * MAX_LOG_CHUNK
#: Longest DAG bundle name or version (Airflow's bundle names are at most 250 characters).
MAX_BUNDLE_NAME = 250
#: Route (and JWT route claim) of the DAG bundle archive download (GET, not JSON).
BUNDLE_ARCHIVE_ROUTE = "bundles/archive"

EXCHANGE_TYPES = ("direct", "topic", "fanout")

# -- bounds of every value a request may carry --------------------------------------------
# Integers are bounded to the columns that store them on every database (INTEGER is 32-bit
# on PostgreSQL and MySQL, BIGINT 64-bit), so an out-of-range value is a 400 naming the
# field, not a database error.

#: Largest value of a 32-bit INTEGER column (slots, map index, try number, concurrency).
MAX_INT32 = 2**31 - 1
#: Largest value of a 64-bit BIGINT column (milliseconds, byte offsets, counters).
MAX_INT64 = 2**63 - 1
#: Most slots a worker or a task may have.
MAX_SLOTS = MAX_INT32
#: Longest expiry or TTL in seconds (100 years): keeps every time stamp a finite number.
MAX_SECONDS = 100 * 365 * 86400
#: Deepest nesting of a request's JSON (objects and arrays).
MAX_JSON_DEPTH = 64
#: Message priorities (higher first): Celery's 0..255 and Airflow's whole ``priority_weight``.
MIN_PRIORITY = -MAX_INT32 - 1
MAX_PRIORITY = MAX_INT32
#: Strings stored in text columns: PostgreSQL refuses the NUL character.
NO_NUL = "^[^\\u0000]*$"
#: The protocol header: a version of this major, ``MAJOR[.MINOR[.PATCH]]``.
PROTOCOL_PATTERN = "^[0-9]+(\\.[0-9]+){0,2}$"

#: States a worker reports of itself (as Airflow's edge worker has them).
WORKER_REPORTED_STATES = (
    "starting",
    "idle",
    "running",
    "maintenance pending",
    "maintenance mode",
    "terminating",
)
#: States only the server assigns: requests not yet acknowledged, and absence.
WORKER_SERVER_STATES = (
    "maintenance request",
    "maintenance exit",
    "shutdown request",
    "offline",
    "offline maintenance",
    "unknown",
)
WORKER_STATES = WORKER_REPORTED_STATES + WORKER_SERVER_STATES
#: Each worker state by name, for code that sets or compares one.
(
    WORKER_STARTING,
    WORKER_IDLE,
    WORKER_RUNNING,
    WORKER_MAINTENANCE_PENDING,
    WORKER_MAINTENANCE_MODE,
    WORKER_TERMINATING,
) = WORKER_REPORTED_STATES
(
    WORKER_MAINTENANCE_REQUEST,
    WORKER_MAINTENANCE_EXIT,
    WORKER_SHUTDOWN_REQUEST,
    WORKER_OFFLINE,
    WORKER_OFFLINE_MAINTENANCE,
    WORKER_UNKNOWN,
) = WORKER_SERVER_STATES

#: Message header with the weight of a task in worker slots (integer >= 1).
HEADER_POOL_SLOTS = "pool_slots"
#: Message header with the central site's Airflow version (set by the EdgeExecutor).
HEADER_AIRFLOW_VERSION = "airflow_version"
#: The Celery task that runs an Airflow workload: the EdgeExecutor publishes it, edge
#: workers register it (the CeleryExecutor's name for it).
AIRFLOW_TASK_NAME = "execute_workload"


def pool_slots(headers: dict | None) -> int:
    """A message's weight in worker slots: its ``pool_slots`` header, 1 when absent.

    Raises :class:`ValueError` naming the allowed values when the header is not an
    integer >= 1; the server refuses such a publish, so a worker never receives one.
    """
    slots = (headers or {}).get(HEADER_POOL_SLOTS)
    if slots is None:
        return 1
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise ValueError(f"headers.{HEADER_POOL_SLOTS} must be an integer >= 1, got {slots!r}")
    if slots > MAX_SLOTS:
        raise ValueError(f"headers.{HEADER_POOL_SLOTS} must be <= {MAX_SLOTS}")
    return slots


def jwt_signing_key(secret: str) -> bytes:
    """The HS512 key derived from the shared secret (64 bytes, whatever the secret's length)."""
    return hashlib.sha512(b"edge-kombu jwt\x00" + secret.encode()).digest()


def versions_differ(ours: str, theirs: str) -> str | None:
    """A warning when two compatible versions differ (same major), else None."""
    if ours == theirs:
        return None
    return (f"edge-kombu {theirs} differs from the server's {ours}: compatible (same major), "
            "but align the versions when you can")


def protocol_major(version: str) -> int:
    """Return the major number of a ``MAJOR.MINOR[.PATCH]`` protocol version string."""
    version = str(version)
    if len(version) > 32 or not re.fullmatch(PROTOCOL_PATTERN, version):
        raise ValueError(f"protocol version {version[:32]!r} is not of the form "
                         "MAJOR.MINOR[.PATCH]")
    return int(version.split(".", 1)[0])


# -- JSON Schemas of request bodies -------------------------------------------------

def _text(max_length: int, min_length: int = 0) -> dict:
    """A string stored in a text column: bounded, and without NUL."""
    return {"type": "string", "minLength": min_length, "maxLength": max_length,
            "pattern": NO_NUL}


def _integer(minimum: int, maximum: int, *, nullable: bool = False) -> dict:
    return {"type": ["integer", "null"] if nullable else "integer",
            "minimum": minimum, "maximum": maximum}


def _number(minimum: float, maximum: float, *, nullable: bool = False) -> dict:
    return {"type": ["number", "null"] if nullable else "number",
            "minimum": minimum, "maximum": maximum}


_NAME = _text(MAX_NAME_LENGTH)
_BUNDLE_VERSION = {"type": ["string", "null"], "minLength": 1, "maxLength": MAX_BUNDLE_NAME,
                   "pattern": NO_NUL}
_QUEUE_NAME = _text(MAX_NAME_LENGTH, 1)
_SESSION = {"type": "string", "minLength": 8, "maxLength": 64, "pattern": "^[A-Za-z0-9_.-]+$"}
_PUBLISH_ID = {"type": "string", "minLength": 8, "maxLength": 64, "pattern": "^[A-Za-z0-9_.-]+$"}
_TAG = _text(64, 1)
_TAGS = {"type": "array", "items": _TAG, "maxItems": MAX_BATCH}
_KEY = _text(MAX_KEY_LENGTH, 1)
_SECONDS = _number(0, MAX_SECONDS, nullable=True)
#: Milliseconds as AMQP gives them (``x-expires``, ``x-message-ttl``, ``expiration``).
_MILLISECONDS_MAX = MAX_SECONDS * 1000
#: A UNIX time stamp (seconds) up to the year 2100.
_TIMESTAMP = _number(0, 4_102_444_800, nullable=True)
#: Queue arguments: free-form, but the TTLs the broker reads are bounded here (their
#: type and sign are the broker's to check, with its own message).
_ARGUMENTS = {
    "type": ["object", "null"],
    "properties": {"x-expires": {"maximum": _MILLISECONDS_MAX},
                   "x-message-ttl": {"maximum": _MILLISECONDS_MAX}},
}


#: A task instance try, by its Airflow coordinates (the TI's uuid is informational).
_TASK_INSTANCE = {
    "dag_id": _text(MAX_ID_LENGTH, 1),
    "task_id": _text(MAX_ID_LENGTH, 1),
    "run_id": _text(MAX_ID_LENGTH, 1),
    "map_index": _integer(-1, MAX_INT32),
    "try_number": _integer(0, MAX_INT32),
    "ti_id": {"type": ["string", "null"], "maxLength": 36, "pattern": NO_NUL},
}
_TASK_INSTANCE_REQUIRED = ("dag_id", "task_id", "run_id", "map_index", "try_number")
_LOG_OFFSET = _integer(0, MAX_INT64)


def _obj(properties: dict, required: tuple = ()) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


#: The message as kombu's virtual transport builds it (``Channel.prepare_message``).
#: Headers and properties are free-form; what the server stores from them (the task id
#: and name of Celery's headers, the slots, the expiration) is bounded here.
MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "body": {"type": ["string", "null"]},
        "content-type": {"type": ["string", "null"]},
        "content-encoding": {"type": ["string", "null"]},
        "headers": {
            "type": ["object", "null"],
            "properties": {
                "id": {"pattern": NO_NUL},
                "task": {"pattern": NO_NUL},
                HEADER_POOL_SLOTS: {"maximum": MAX_SLOTS},
            },
        },
        "properties": {
            "type": "object",
            "properties": {
                # kombu sends milliseconds as a string of digits.
                "expiration": {"type": ["string", "number", "null"],
                               "pattern": "^[0-9]{1,15}(\\.[0-9]{1,6})?$",
                               "minimum": 0, "maximum": _MILLISECONDS_MAX},
            },
        },
    },
    "required": ["body", "properties"],
}

#: What a heartbeat says about the host (``worker/sysinfo.py``): the known measures are
#: typed; a newer worker may add others, as single values.
_SCALAR = {"type": ["string", "number", "boolean", "null"], "maxLength": 256}
_SYSINFO = {
    "type": "object",
    "maxProperties": 32,
    "properties": {
        "cpu_percent": _number(0, 100, nullable=True),
        "memory_percent": _number(0, 100, nullable=True),
        "memory_used_bytes": _integer(0, MAX_INT64, nullable=True),
        "disk_free_bytes": _integer(0, MAX_INT64, nullable=True),
        "load_avg": {"type": ["array", "null"], "maxItems": 3, "items": _number(0, 1e6)},
    },
    "additionalProperties": _SCALAR,
}
#: Versions of the worker's software by name (edge_kombu, celery, python, airflow).
_VERSIONS = {
    "type": "object",
    "maxProperties": 32,
    "propertyNames": {"maxLength": 64},
    "additionalProperties": {"type": ["string", "null"], "maxLength": 64},
}
#: The Celery worker consuming (a plain ``celery worker``, not registered by heartbeats).
_CELERY_NODE = _obj(
    {
        "name": _text(MAX_NAME_LENGTH, 1),
        "pool": _text(64),
        "concurrency": _integer(1, MAX_SLOTS, nullable=True),
        "versions": _VERSIONS,
    },
    ("name",),
)
#: One task a worker runs (``EdgeWorker.running``).
_RUNNING_TASK = {
    "type": "object",
    "maxProperties": 32,
    "properties": {
        "id": _KEY,
        "name": _text(MAX_NAME_LENGTH),
        "slots": _integer(1, MAX_SLOTS),
        "started": _TIMESTAMP,
    },
    "required": ["id", "name"],
    "additionalProperties": _SCALAR,
}

REQUESTS: dict[str, dict] = {
    "exchange/declare": _obj(
        {
            "name": _NAME,
            "type": {"enum": list(EXCHANGE_TYPES)},
            "durable": {"type": "boolean"},
            "auto_delete": {"type": "boolean"},
            "arguments": _ARGUMENTS,
            "passive": {"type": "boolean"},
        },
        ("name",),
    ),
    "exchange/delete": _obj({"name": _NAME}, ("name",)),
    "queue/declare": _obj(
        {
            "name": _QUEUE_NAME,
            "durable": {"type": "boolean"},
            "auto_delete": {"type": "boolean"},
            "exclusive": {"type": "boolean"},
            "arguments": _ARGUMENTS,
            "passive": {"type": "boolean"},
            # Consumer sessions of the declaring process (one it carries on after a lost
            # connection): their consumers are not counted as other consumers.
            "own_sessions": {"type": "array", "items": _SESSION, "maxItems": 8},
        },
        ("name",),
    ),
    "queue/delete": _obj(
        {"name": _QUEUE_NAME, "if_unused": {"type": "boolean"}, "if_empty": {"type": "boolean"}},
        ("name",),
    ),
    "queue/purge": _obj({"name": _QUEUE_NAME}, ("name",)),
    "queue/bind": _obj(
        {"queue": _QUEUE_NAME, "exchange": _NAME, "routing_key": _NAME, "arguments": _ARGUMENTS},
        ("queue", "exchange"),
    ),
    "queue/unbind": _obj(
        {"queue": _QUEUE_NAME, "exchange": _NAME, "routing_key": _NAME}, ("queue", "exchange")
    ),
    "publish": _obj(
        {
            "exchange": _NAME,
            "routing_key": _NAME,
            "message": MESSAGE_SCHEMA,
            "mandatory": {"type": "boolean"},
            # The client's id of this publish, the same in its resends: the server stores
            # a repeat within its dedupe window once.
            "publish_id": _PUBLISH_ID,
        },
        ("exchange", "routing_key", "message"),
    ),
    "consume": _obj(
        {
            "session": _SESSION,
            "total_slots": _integer(1, MAX_SLOTS, nullable=True),
            "queues": {
                "type": "array",
                "maxItems": 1000,
                "items": _obj({"name": _QUEUE_NAME, "no_ack": {"type": "boolean"}}, ("name",)),
            },
            "wait": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
            "max_slots": _integer(0, MAX_SLOTS, nullable=True),
            "max_messages": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH},
            "node": _CELERY_NODE,
        },
        ("session", "queues"),
    ),
    "ack": _obj(
        {"session": _SESSION, "delivery_tags": _TAGS},
        ("session", "delivery_tags"),
    ),
    "reject": _obj(
        {
            "session": _SESSION,
            "delivery_tags": _TAGS,
            "requeue": {"type": "boolean"},
        },
        ("session", "delivery_tags"),
    ),
    "hello": _obj({}),
    "session/close": _obj({"session": _SESSION}, ("session",)),
    "session/wake": _obj({"session": _SESSION}, ("session",)),
    "session/resume": _obj(
        {"session": _SESSION, "held": {"type": "array", "items": _TAG, "maxItems": MAX_HELD}},
        ("session", "held"),
    ),
    "worker/heartbeat": _obj(
        {
            "name": _QUEUE_NAME,
            "instance": _text(64, 8),
            "state": {"enum": list(WORKER_REPORTED_STATES)},
            "queues": {"type": "array", "items": _QUEUE_NAME, "maxItems": 256},
            "slots_total": _integer(1, MAX_SLOTS),
            "slots_used": _integer(0, MAX_SLOTS),
            "running": {"type": "array", "maxItems": 10_000, "items": _RUNNING_TASK},
            "sysinfo": _SYSINFO,
            "versions": _VERSIONS,
            "maintenance": {"type": "boolean"},
            "maintenance_comment": {"type": ["string", "null"], "maxLength": 1024,
                                    "pattern": NO_NUL},
            "maintenance_changed_at": _TIMESTAMP,
            "session": {"type": ["string", "null"], "maxLength": 64, "pattern": NO_NUL},
        },
        ("name", "instance", "state", "queues", "slots_total"),
    ),
    "worker/deregister": _obj(
        {"name": _QUEUE_NAME, "instance": _text(64),
         "maintenance": {"type": "boolean"}},
        ("name", "instance"),
    ),
    "results/get": _obj({"key": _KEY}, ("key",)),
    "results/mget": _obj(
        {"keys": {"type": "array", "items": _KEY, "maxItems": MAX_MGET_KEYS}}, ("keys",)
    ),
    "results/set": _obj(
        {
            "key": _KEY,
            "value": {"type": "string"},
            "encoding": {"enum": ["utf-8", "base64"]},
            "expires": _SECONDS,
            # Keep a stored Celery result whose status is SUCCESS (JSON) rather than
            # overwrite it: Celery's guard against a lost task's late update, without the
            # read it costs a client.
            "keep_success": {"type": "boolean"},
        },
        ("key", "value"),
    ),
    "results/delete": _obj({"key": _KEY}, ("key",)),
    "results/incr": _obj(
        {"key": _KEY, "amount": _integer(-MAX_INT64, MAX_INT64), "expires": _SECONDS},
        ("key",),
    ),
    "results/expire": _obj({"key": _KEY, "expires": _SECONDS}, ("key", "expires")),
    "logs/push": _obj(
        {
            **_TASK_INSTANCE,
            "offset": _LOG_OFFSET,
            "data": {"type": "string", "maxLength": MAX_LOG_CHUNK},
        },
        (*_TASK_INSTANCE_REQUIRED, "offset", "data"),
    ),
    "logs/read": _obj(
        {
            **_TASK_INSTANCE,
            "offset": _LOG_OFFSET,
            "limit": {"type": "integer", "minimum": 1, "maximum": MAX_LOG_READ},
        },
        _TASK_INSTANCE_REQUIRED,
    ),
    "bundles/resolve": _obj(
        {"name": _text(MAX_BUNDLE_NAME, 1), "version": _BUNDLE_VERSION}, ("name",)
    ),
}

# -- JSON Schemas of answers (200) ----------------------------------------------------------
# Fields may be added in a minor version: answers allow more than they list.


def _answer(properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties)}


_INT = {"type": "integer"}
_STR = {"type": "string"}
_NULLABLE_STR = {"type": ["string", "null"]}
#: A result: UTF-8 text, ``{"base64": ...}`` for other bytes, or null when absent.
_RESULT_VALUE = {"oneOf": [
    {"type": "null"},
    {"type": "string"},
    _answer({"base64": _STR}),
]}
_NOTHING = {"type": "object"}
_SETTLED = _answer({"settled": _INT, "unknown": {"type": "array", "items": _STR}})

RESPONSES: dict[str, dict] = {
    "exchange/declare": _NOTHING,
    "exchange/delete": _NOTHING,
    "queue/declare": _answer({"name": _STR, "messages": _INT, "consumers": _INT}),
    "queue/delete": _answer({"messages": _INT}),
    "queue/purge": _answer({"messages": _INT}),
    "queue/bind": _NOTHING,
    "queue/unbind": _NOTHING,
    "publish": _answer({"routed": _INT}),
    "consume": _answer({"messages": {"type": "array", "items": _answer(
        {"queue": _STR, "message": {"type": "object"}})}}),
    "ack": _SETTLED,
    "reject": _SETTLED,
    "hello": _answer({
        "principal": _STR, "version": _STR, "protocol": _STR, "max_wait": {"type": "number"},
        "lease_timeout": {"type": "number"}, "max_body_bytes": _INT,
    }),
    "session/close": _answer({"released": _INT}),
    "session/wake": _NOTHING,
    "session/resume": _answer({"released": _INT, "unknown": {"type": "array", "items": _STR}}),
    "worker/heartbeat": _answer({
        "state": {"enum": list(WORKER_STATES)}, "maintenance": {"type": "boolean"},
        "maintenance_comment": _NULLABLE_STR, "shutdown": {"type": "boolean"},
        "queues": {"type": "array", "items": _STR},
        "concurrency": {"type": ["integer", "null"]}, "version_warning": _NULLABLE_STR,
    }),
    "worker/deregister": _NOTHING,
    "results/get": _answer({"value": _RESULT_VALUE}),
    "results/mget": _answer({"values": {"type": "array", "items": _RESULT_VALUE}}),
    "results/set": _answer({"stored": {"type": "boolean"}}),
    "results/delete": _NOTHING,
    "results/incr": _answer({"value": _INT}),
    "results/expire": _answer({"found": {"type": "boolean"}}),
    "logs/push": _answer({"length": _INT}),
    "logs/read": _answer({"found": {"type": "boolean"}, "data": _STR, "offset": _INT,
                          "next_offset": _INT, "length": _INT}),
    "bundles/resolve": _answer({"name": _STR, "version": _STR, "sha256": _STR, "size": _INT}),
}

#: Error answers beyond those of every route (400, 401, 403, 413, 426, 429, 503): what
#: each route's own rules may answer.
ROUTE_ERRORS: dict[str, tuple[int, ...]] = {
    "exchange/declare": (404, 409),  # passive and missing; redeclared with another type
    "queue/declare": (404,),  # passive and missing
    "queue/bind": (404,),  # exchange or queue missing
    "publish": (404, 422),  # exchange missing; mandatory and unroutable
    "consume": (410,),  # the session was closed
    "session/resume": (410,),  # the session was closed or expired meanwhile
    "ack": (404,),  # no tag leased by this session
    "reject": (404,),
    "worker/heartbeat": (409,),  # the name is online in another process
    "results/incr": (409,),  # the stored value is not an integer
    "logs/push": (409,),  # the offset does not follow the stored log
    "bundles/resolve": (404,),  # no such bundle or version (413: above the size limit)
}

#: Routes that may be sent again when the connection broke before an answer came (a
#: pooled keep-alive connection the server had closed): repeating them changes nothing.
#: Publish is one since it carries a ``publish_id`` (the server stores a repeat once); not
#: consume (leases nobody would receive) or results/incr.
IDEMPOTENT_ROUTES = frozenset({
    "hello", "publish", "exchange/declare", "queue/declare", "queue/bind", "queue/unbind",
    "ack", "reject", "session/close", "session/wake", "session/resume", "worker/heartbeat",
    "worker/deregister", "results/get", "results/mget", "results/set", "results/delete",
    "results/expire", "logs/push", "logs/read", "bundles/resolve",
})

#: One line per route, for the OpenAPI document and the README.
SUMMARIES: dict[str, str] = {
    "exchange/declare": "Declare an exchange (direct, topic or fanout); passive checks it exists.",
    "exchange/delete": "Delete an exchange and its bindings.",
    "queue/declare": "Declare a queue with x-expires / x-message-ttl; returns its depth.",
    "queue/delete": "Delete a queue, its bindings and its messages.",
    "queue/purge": "Remove every message of a queue that is not leased.",
    "queue/bind": "Bind a queue to an exchange with a routing key (topic patterns allowed).",
    "queue/unbind": "Remove a binding.",
    "publish": "Route one message through an exchange; returns the number of queues it reached.",
    "consume": "Long-poll: lease messages from several queues, waiting up to `wait` seconds.",
    "ack": "Acknowledge leased messages (deletes them).",
    "reject": "Reject leased messages; requeue releases them for redelivery.",
    "hello": "Check credentials and protocol version; returns the server's limits.",
    "session/close": "End a consumer session; its leased messages are redelivered.",
    "session/wake": "Cut a waiting consume of this session short (its capacity changed).",
    "session/resume": "Carry a consumer session on over a new connection: keep the leases "
                      "the consumer still holds, redeliver the others (answers it never got).",
    "worker/heartbeat": "Register or refresh a worker; returns what the admins asked of it.",
    "worker/deregister": "A worker stopped cleanly (offline, or offline maintenance).",
    "results/get": "Read one result.",
    "results/mget": "Read many results in one request.",
    "results/set": "Write a result with an optional expiry in seconds (with keep_success, "
                   "not over a stored SUCCESS; stored says whether it was written).",
    "results/delete": "Delete a result.",
    "results/incr": "Atomically add to an integer result (chord counters).",
    "results/expire": "Set the expiry of a result.",
    "logs/push": "Append a chunk to a task's log at a UTF-8 byte offset; a repeated chunk is "
                 "ignored. Returns the stored length.",
    "logs/read": "Read a task's log from a byte offset (at most `limit` bytes).",
    "bundles/resolve": "The archive of a DAG bundle at a version (none: its current one): "
                       "its version, sha256 and size; fetch it from GET bundles/archive.",
}

assert set(SUMMARIES) == set(REQUESTS) == set(RESPONSES)
assert set(ROUTE_ERRORS) <= set(REQUESTS)
