"""The HTTP routes of the broker API: thin wrappers over :class:`~edge_kombu.server.store.Store`."""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from flask import Blueprint, current_app, g, jsonify, request

from edge_kombu import __version__, errors
from edge_kombu.protocol import (
    API_PATH,
    HEADER_PROTOCOL,
    MAX_LOG_READ,
    PROTOCOL_VERSION,
    REQUESTS,
    protocol_major,
)
from edge_kombu.server import metrics
from edge_kombu.server.logs import TaskInstanceTry
from edge_kombu.server.openapi import openapi_document
from edge_kombu.server.validation import validate

bp = Blueprint("edge_api", __name__, url_prefix=API_PATH)

_ROUTES: dict[str, Callable[[dict], dict]] = {}


def route(name: str):
    def register(func: Callable[[dict], dict]) -> Callable[[dict], dict]:
        _ROUTES[name] = func
        return func

    return register


def _broker():
    return current_app.extensions["edge_kombu"]


@bp.get("/health")
def health():
    return jsonify(status="ok", version=__version__, protocol=PROTOCOL_VERSION)


@bp.get("/openapi.json")
def openapi():
    _authenticate("openapi.json")
    return jsonify(openapi_document())


@bp.post("/<path:name>")
def dispatch(name: str):
    handler = _ROUTES.get(name)
    if handler is None:
        raise errors.NotFound(
            f"no route POST {API_PATH}/{name}; see GET {API_PATH}/openapi.json for the routes"
        )
    _authenticate(name)
    _check_protocol()
    if not request.is_json:
        raise errors.InvalidRequest("Content-Type must be application/json")
    body = request.get_json(silent=True)
    if body is None:
        raise errors.InvalidRequest("request body is not valid JSON")
    return jsonify(handler(validate(name, body)))


def _check_protocol() -> None:
    version = request.headers.get(HEADER_PROTOCOL)
    if version is None:
        raise errors.InvalidRequest(
            f"missing header {HEADER_PROTOCOL} (this server speaks {PROTOCOL_VERSION})"
        )
    try:
        major = protocol_major(version)
    except ValueError as exc:
        raise errors.InvalidRequest(f"header {HEADER_PROTOCOL}: {exc}") from None
    if major != protocol_major(PROTOCOL_VERSION):
        ours = protocol_major(PROTOCOL_VERSION)
        raise errors.VersionMismatch(
            f"client speaks protocol {version}, this server {PROTOCOL_VERSION}: "
            f"only clients of protocol {ours}.x (edge-kombu {ours}.x) are accepted"
        )


def _authenticate(name: str) -> None:
    g.principal = _broker().auth.authenticate(request.headers.get("Authorization"), name)


# -- exchanges, queues, bindings ---------------------------------------------------------


@route("hello")
def hello(_body: dict) -> dict:
    broker = _broker()
    return {
        "principal": g.principal,
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "max_wait": broker.config.max_wait,
        "lease_timeout": broker.config.lease_timeout,
        "max_body_bytes": broker.config.max_body_bytes,
    }


@route("exchange/declare")
def exchange_declare(body: dict) -> dict:
    _broker().store.declare_exchange(
        body["name"],
        body.get("type", "direct"),
        durable=body.get("durable", True),
        auto_delete=body.get("auto_delete", False),
        arguments=body.get("arguments"),
        passive=body.get("passive", False),
    )
    return {}


@route("exchange/delete")
def exchange_delete(body: dict) -> dict:
    _broker().store.delete_exchange(body["name"])
    return {}


@route("queue/declare")
def queue_declare(body: dict) -> dict:
    info = _broker().store.declare_queue(
        body["name"],
        durable=body.get("durable", True),
        auto_delete=body.get("auto_delete", False),
        exclusive=body.get("exclusive", False),
        arguments=body.get("arguments"),
        passive=body.get("passive", False),
    )
    return {"name": info.name, "messages": info.messages, "consumers": info.consumers}


@route("queue/delete")
def queue_delete(body: dict) -> dict:
    deleted = _broker().store.delete_queue(
        body["name"], if_unused=body.get("if_unused", False), if_empty=body.get("if_empty", False)
    )
    return {"messages": deleted}


@route("queue/purge")
def queue_purge(body: dict) -> dict:
    return {"messages": _broker().store.purge_queue(body["name"])}


@route("queue/bind")
def queue_bind(body: dict) -> dict:
    _broker().store.bind(body["queue"], body["exchange"], body.get("routing_key", ""))
    return {}


@route("queue/unbind")
def queue_unbind(body: dict) -> dict:
    _broker().store.unbind(body["queue"], body["exchange"], body.get("routing_key", ""))
    return {}


# -- messages ----------------------------------------------------------------------------


@route("publish")
def publish(body: dict) -> dict:
    queues = _broker().store.publish(
        body["exchange"],
        body["routing_key"],
        body["message"],
        mandatory=body.get("mandatory", False),
    )
    metrics.PUBLISHED.inc(len(queues))
    return {"routed": len(queues)}


@route("consume")
def consume(body: dict) -> dict:
    broker = _broker()
    session = body["session"]
    queues = [(q["name"], q.get("no_ack", False)) for q in body["queues"]]
    names = [name for name, _ in queues]
    max_slots = body.get("max_slots")
    max_messages = body.get("max_messages", 1)
    wait = min(body.get("wait", 0.0), broker.config.max_wait)
    broker.sessions.touch(session, g.principal, names)
    deadline = time.monotonic() + wait
    with broker.registry.waiting(names, session, max_slots) as waiter:
        while True:
            waiter.event.clear()
            found = broker.store.claim(
                session, queues, max_slots=max_slots, max_messages=max_messages,
                total_slots=body.get("total_slots"),
            )
            remaining = deadline - time.monotonic()
            if found or remaining <= 0 or waiter.by_session:
                break
            if not waiter.wait(remaining) or waiter.by_session:
                # Timed out, or this session's capacity changed: let the client ask again.
                break
    if waiter.event.is_set() and not waiter.by_session:
        # Woken for one message that this consume did not claim (it had its answer, or its
        # wait ran out): a publish wakes one waiter per message, so hand the wake-up on.
        broker.registry.wake_some({queue: (1, None) for queue in waiter.queues})
    metrics.record_deliveries([d.message for d in found])
    return {"messages": [{"queue": d.queue, "message": d.message} for d in found]}


@route("ack")
def ack(body: dict) -> dict:
    answer = _settle("ack", body, lambda s, t: _broker().store.ack(s, t))
    metrics.ACKED.inc(answer["settled"])
    return answer


@route("reject")
def reject(body: dict) -> dict:
    requeue = body.get("requeue", False)
    answer = _settle("reject", body,
                     lambda s, t: _broker().store.reject(s, t, requeue=requeue))
    metrics.REJECTED.labels(str(requeue).lower()).inc(answer["settled"])
    return answer


def _settle(verb: str, body: dict, apply) -> dict:
    tags = body["delivery_tags"]
    done, unknown = apply(body["session"], tags)
    if unknown and not done:
        raise errors.NotFound(
            f"cannot {verb}: delivery tag(s) {', '.join(map(repr, unknown[:10]))} are not leased "
            "by this session (already settled, or the lease expired and the message was "
            "redelivered)"
        )
    return {"settled": done, "unknown": unknown}


@route("session/close")
def session_close(body: dict) -> dict:
    broker = _broker()
    released = broker.store.close_session(body["session"])
    broker.sessions.forget(body["session"])
    broker.registry.wake_sessions([body["session"]])
    return {"released": released}


@route("session/wake")
def session_wake(body: dict) -> dict:
    _broker().store.signal(sessions=[body["session"]])
    return {}


# -- workers -----------------------------------------------------------------------------


@route("worker/heartbeat")
def worker_heartbeat(body: dict) -> dict:
    return _broker().workers.heartbeat(body)


@route("worker/deregister")
def worker_deregister(body: dict) -> dict:
    _broker().workers.deregister(body["name"], body["instance"])
    return {}


# -- results -----------------------------------------------------------------------------


def _encode_value(value: bytes | None):
    if value is None:
        return None
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


def _decode_value(body: dict) -> bytes:
    if body.get("encoding", "utf-8") == "base64":
        try:
            return base64.b64decode(body["value"], validate=True)
        except binascii.Error:
            raise errors.InvalidRequest("value: not valid base64") from None
    return body["value"].encode("utf-8")


@route("results/get")
def results_get(body: dict) -> dict:
    return {"value": _encode_value(_broker().store.get_result(body["key"]))}


@route("results/mget")
def results_mget(body: dict) -> dict:
    return {"values": [_encode_value(v) for v in _broker().store.mget_results(body["keys"])]}


@route("results/set")
def results_set(body: dict) -> dict:
    _broker().store.set_result(body["key"], _decode_value(body), expires=body.get("expires"))
    return {}


@route("results/delete")
def results_delete(body: dict) -> dict:
    _broker().store.delete_result(body["key"])
    return {}


@route("results/incr")
def results_incr(body: dict) -> dict:
    value = _broker().store.incr_result(
        body["key"], body.get("amount", 1), expires=body.get("expires")
    )
    return {"value": value}


@route("results/expire")
def results_expire(body: dict) -> dict:
    return {"found": _broker().store.expire_result(body["key"], body.get("expires"))}


# -- task logs ---------------------------------------------------------------------------


@route("logs/push")
def logs_push(body: dict) -> dict:
    length = _broker().logs.append(
        TaskInstanceTry.from_request(body), body["offset"], body["data"], ti_id=body.get("ti_id")
    )
    return {"length": length}


@route("logs/read")
def logs_read(body: dict) -> dict:
    got = _broker().logs.read(
        TaskInstanceTry.from_request(body), body.get("offset", 0),
        body.get("limit", MAX_LOG_READ),
    )
    return {"found": got.found, "data": got.data, "offset": got.offset,
            "next_offset": got.next_offset, "length": got.length}


class SessionTouches:
    """Writes a session's liveness at most every ``interval`` seconds per process.

    A long-polling worker asks several times a second when busy; writing
    ``last_seen`` each time would cost a database write per poll for nothing.
    """

    def __init__(self, store, interval: float, *, capacity: int = 100_000) -> None:
        self.store = store
        self.interval = interval
        self.capacity = capacity
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, tuple[frozenset, float]] = OrderedDict()

    def touch(self, session: str, principal: str, queues: list[str]) -> None:
        now = time.monotonic()
        key = frozenset(queues)
        with self._lock:
            last = self._seen.get(session)
        if last is not None and last[0] == key and now - last[1] < self.interval:
            return
        self.store.touch_session(session, principal, key)
        with self._lock:
            self._seen[session] = (key, now)
            self._seen.move_to_end(session)
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)

    def forget(self, session: str) -> None:
        with self._lock:
            self._seen.pop(session, None)


assert set(_ROUTES) == set(REQUESTS), "every protocol route needs a handler"
