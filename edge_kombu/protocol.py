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
#: Longest a consume may wait on the server, in seconds.
MAX_WAIT_SECONDS = 60.0
#: Longest dag_id, task_id or run_id (Airflow's ``ID_LEN``).
MAX_ID_LENGTH = 250
#: Largest log chunk one ``logs/push`` may carry, in characters (the worker's
#: ``[edge] push_log_chunk_size`` is capped to it).
MAX_LOG_CHUNK = 1_048_576
#: Most characters one ``logs/read`` returns.
MAX_LOG_READ = 8 * MAX_LOG_CHUNK

EXCHANGE_TYPES = ("direct", "topic", "fanout")

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
    """Return the major number of a ``MAJOR.MINOR`` protocol version string."""
    head = str(version).split(".", 1)[0]
    if not head.isdigit():
        raise ValueError(f"protocol version {version!r} is not of the form MAJOR.MINOR")
    return int(head)


# -- JSON Schemas of request bodies -------------------------------------------------

_NAME = {"type": "string", "maxLength": MAX_NAME_LENGTH}
_QUEUE_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH}
_SESSION = {"type": "string", "minLength": 8, "maxLength": 64, "pattern": "^[A-Za-z0-9_.-]+$"}
_TAG = {"type": "string", "minLength": 1, "maxLength": 64}
_TAGS = {"type": "array", "items": _TAG, "maxItems": MAX_BATCH}
_KEY = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH}
_ARGUMENTS = {"type": ["object", "null"]}
_SECONDS = {"type": ["number", "null"], "minimum": 0}


#: A task instance try, by its Airflow coordinates (the TI's uuid is informational).
_TASK_INSTANCE = {
    "dag_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
    "task_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
    "run_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
    "map_index": {"type": "integer", "minimum": -1},
    "try_number": {"type": "integer", "minimum": 0},
    "ti_id": {"type": ["string", "null"], "maxLength": 36},
}
_TASK_INSTANCE_REQUIRED = ("dag_id", "task_id", "run_id", "map_index", "try_number")
_LOG_OFFSET = {"type": "integer", "minimum": 0}


def _obj(properties: dict, required: tuple = ()) -> dict:
    return {
        "type": "object",
        "properties": properties,
        "required": list(required),
        "additionalProperties": False,
    }


#: The message as kombu's virtual transport builds it (``Channel.prepare_message``).
MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "body": {"type": ["string", "null"]},
        "content-type": {"type": ["string", "null"]},
        "content-encoding": {"type": ["string", "null"]},
        "headers": {"type": ["object", "null"]},
        "properties": {"type": "object"},
    },
    "required": ["body", "properties"],
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
        },
        ("exchange", "routing_key", "message"),
    ),
    "consume": _obj(
        {
            "session": _SESSION,
            "total_slots": {"type": ["integer", "null"], "minimum": 1},
            "queues": {
                "type": "array",
                "maxItems": 1000,
                "items": _obj({"name": _QUEUE_NAME, "no_ack": {"type": "boolean"}}, ("name",)),
            },
            "wait": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_SECONDS},
            "max_slots": {"type": ["integer", "null"], "minimum": 0},
            "max_messages": {"type": "integer", "minimum": 1, "maximum": MAX_BATCH},
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
    "worker/heartbeat": _obj(
        {
            "name": _QUEUE_NAME,
            "instance": {"type": "string", "minLength": 8, "maxLength": 64},
            "state": {"enum": list(WORKER_REPORTED_STATES)},
            "queues": {"type": "array", "items": _QUEUE_NAME, "maxItems": 256},
            "slots_total": {"type": "integer", "minimum": 1},
            "slots_used": {"type": "integer", "minimum": 0},
            "running": {"type": "array", "maxItems": 10_000, "items": {"type": "object"}},
            "sysinfo": {"type": "object"},
            "versions": {"type": "object"},
            "maintenance": {"type": "boolean"},
            "maintenance_comment": {"type": ["string", "null"], "maxLength": 1024},
            "maintenance_changed_at": {"type": ["number", "null"]},
            "session": {"type": ["string", "null"], "maxLength": 64},
        },
        ("name", "instance", "state", "queues", "slots_total"),
    ),
    "worker/deregister": _obj(
        {"name": _QUEUE_NAME, "instance": {"type": "string", "maxLength": 64},
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
        },
        ("key", "value"),
    ),
    "results/delete": _obj({"key": _KEY}, ("key",)),
    "results/incr": _obj(
        {"key": _KEY, "amount": {"type": "integer"}, "expires": _SECONDS}, ("key",)
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
}

#: Routes that may be sent again when the connection broke before an answer came (a
#: pooled keep-alive connection the server had closed): repeating them changes nothing.
#: Not publish (a duplicate), consume (leases nobody would receive) or results/incr.
IDEMPOTENT_ROUTES = frozenset({
    "hello", "exchange/declare", "queue/declare", "queue/bind", "queue/unbind",
    "ack", "reject", "session/close", "session/wake", "worker/heartbeat",
    "worker/deregister", "results/get", "results/mget", "results/set", "results/delete",
    "results/expire", "logs/push", "logs/read",
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
    "worker/heartbeat": "Register or refresh a worker; returns what the admins asked of it.",
    "worker/deregister": "A worker stopped cleanly (offline, or offline maintenance).",
    "results/get": "Read one result.",
    "results/mget": "Read many results in one request.",
    "results/set": "Write a result with an optional expiry in seconds.",
    "results/delete": "Delete a result.",
    "results/incr": "Atomically add to an integer result (chord counters).",
    "results/expire": "Set the expiry of a result.",
    "logs/push": "Append a chunk to a task's log at a UTF-8 byte offset; a repeated chunk is "
                 "ignored. Returns the stored length.",
    "logs/read": "Read a task's log from a byte offset (at most `limit` bytes).",
}

assert set(SUMMARIES) == set(REQUESTS)
