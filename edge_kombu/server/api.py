"""The HTTP routes of the edge API: validate, authorize, call one service, answer JSON.

The services are those of :class:`~edge_kombu.server.app.Services`; the request bodies
are validated against the JSON Schemas of :mod:`edge_kombu.protocol` before a handler runs.
Each handler checks the caller's :class:`~edge_kombu.server.scopes.Scope` (``g.scope``)
for what it asks; the broker checks where a message would go inside its transaction.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from flask import Blueprint, current_app, g, jsonify, request, send_file

from edge_kombu import __version__, errors
from edge_kombu.protocol import (
    API_PATH,
    BUNDLE_ARCHIVE_ROUTE,
    HEADER_PROTOCOL,
    MAX_BATCH,
    MAX_BUNDLE_NAME,
    MAX_LOG_READ,
    PROTOCOL_VERSION,
    REQUESTS,
    protocol_major,
)
from edge_kombu.server import metrics
from edge_kombu.server.logs import TaskInstanceTry
from edge_kombu.server.openapi import openapi_document
from edge_kombu.server.scopes import Scope
from edge_kombu.server.validation import validate

bp = Blueprint("edge_api", __name__, url_prefix=API_PATH)

_ROUTES: dict[str, Callable[[dict], dict]] = {}


def route(name: str):
    def register(func: Callable[[dict], dict]) -> Callable[[dict], dict]:
        _ROUTES[name] = func
        return func

    return register


def _services():
    return current_app.extensions["edge_kombu"]


@bp.get("/health")
def health():
    return jsonify(status="ok", version=__version__, protocol=PROTOCOL_VERSION)


@bp.get("/openapi.json")
def openapi():
    _authenticate("openapi.json")
    return jsonify(openapi_document())


@bp.get(f"/{BUNDLE_ARCHIVE_ROUTE}")
def bundle_archive():
    """A DAG bundle's archive by name and sha256 (as ``bundles/resolve`` named it)."""
    _authenticate(BUNDLE_ARCHIVE_ROUTE)
    _check_protocol()
    name, sha256 = request.args.get("name", ""), request.args.get("sha256", "")
    if not 0 < len(name) <= MAX_BUNDLE_NAME:
        raise errors.InvalidRequest(f"query parameter name: 1 to {MAX_BUNDLE_NAME} characters")
    store = _bundles()
    store.check_access(_scope(), name)
    path = store.archive(name, sha256)
    metrics.BUNDLE_ARCHIVES.inc()
    metrics.BUNDLE_BYTES.inc(path.stat().st_size)
    response = send_file(path, mimetype="application/gzip", etag=sha256, conditional=True,
                         download_name=f"{sha256}.tar.gz", max_age=86400)
    response.headers["X-Edge-Bundle-Sha256"] = sha256
    return response


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
    g.scope = _services().auth.authenticate(request.headers.get("Authorization"), name)
    g.principal = g.scope.name
    if g.scope.admin and name != "openapi.json":
        raise g.scope.forbid(f"POST {API_PATH}/{name}")


def _bundles():
    return current_app.extensions["edge_kombu_bundles"]


def _scope() -> Scope:
    return g.scope


def _owner(queue: str) -> str | None:
    return _services().broker.queue_owners([queue]).get(queue)


def _own_session(session: str, what: str) -> None:
    """A worker credential acts only in consumer sessions it opened."""
    scope = _scope()
    if scope.central:
        return
    opener = _services().broker.session_principal(session)
    if opener is not None and opener != scope.name:
        raise scope.forbid(f"{what} in consumer session {session}, opened by another credential")


# -- exchanges, queues, bindings ---------------------------------------------------------


@route("hello")
def hello(_body: dict) -> dict:
    services = _services()
    # Workers probe hello to know when to come back: it answers 503 while the database is
    # unreachable, also for credentials checked without it (shared-secret JWTs).
    services.sql.ping()
    config = services.config
    return {
        "principal": g.principal,
        "scope": _describe_scope(_scope()),
        "version": __version__,
        "protocol": PROTOCOL_VERSION,
        "max_wait": config.max_wait,
        "lease_timeout": config.lease_timeout,
        "max_body_bytes": config.max_body_bytes,
    }


def _describe_scope(scope: Scope) -> dict:
    if scope.central:
        return {"kind": "central"}
    return {"kind": "worker", "workers": scope.workers, "queues": sorted(scope.queues),
            "publish": sorted(scope.publish)}


@route("exchange/declare")
def exchange_declare(body: dict) -> dict:
    _services().broker.declare_exchange(
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
    _scope().require_central(f"deleting exchange {body['name']!r}")
    _services().broker.delete_exchange(body["name"])
    return {}


@route("queue/declare")
def queue_declare(body: dict) -> dict:
    scope, passive = _scope(), body.get("passive", False)
    scope.check_declare(body["name"])
    info = _services().broker.declare_queue(
        body["name"],
        durable=body.get("durable", True),
        auto_delete=body.get("auto_delete", False),
        exclusive=body.get("exclusive", False),
        arguments=body.get("arguments"),
        passive=passive,
        owner=scope.owner_for(body["name"]),
        central=scope.central,
        principal=g.principal,
        own_sessions=body.get("own_sessions") or (),
    )
    return {"name": info.name, "messages": info.messages, "consumers": info.consumers}


@route("queue/delete")
def queue_delete(body: dict) -> dict:
    _scope().check_owned(body["name"], _owner(body["name"]), "deleting")
    deleted = _services().broker.delete_queue(
        body["name"], if_unused=body.get("if_unused", False), if_empty=body.get("if_empty", False)
    )
    return {"messages": deleted}


@route("queue/purge")
def queue_purge(body: dict) -> dict:
    _scope().check_owned(body["name"], _owner(body["name"]), "purging")
    return {"messages": _services().broker.purge_queue(body["name"])}


@route("queue/bind")
def queue_bind(body: dict) -> dict:
    if not _scope().central:
        _scope().check_bind(body["queue"], body["exchange"], body.get("routing_key", ""),
                            _owner(body["queue"]))
    _services().broker.bind(body["queue"], body["exchange"], body.get("routing_key", ""))
    return {}


@route("queue/unbind")
def queue_unbind(body: dict) -> dict:
    _scope().check_owned(body["queue"], _owner(body["queue"]), "unbinding")
    _services().broker.unbind(body["queue"], body["exchange"], body.get("routing_key", ""))
    return {}


# -- messages ----------------------------------------------------------------------------


@route("publish")
def publish(body: dict) -> dict:
    queues, repeated = _services().broker.publish_once(
        body["exchange"],
        body["routing_key"],
        body["message"],
        mandatory=body.get("mandatory", False),
        check=None if _scope().central else _scope().check_publish,
        publish_id=body.get("publish_id"),
        principal=g.principal,
    )
    if repeated:
        metrics.PUBLISH_REPEATS.inc()
    else:
        metrics.PUBLISHED.inc(len(queues))
    return {"routed": len(queues)}


@route("consume")
def consume(body: dict) -> dict:
    scope = _scope()
    names = [q["name"] for q in body["queues"]]
    private = scope.private_queues(names)
    scope.check_consume(names, _services().broker.queue_owners(private) if private else {})
    found = _services().broker.consume(
        body["session"],
        g.principal,
        [(q["name"], q.get("no_ack", False)) for q in body["queues"]],
        max_slots=body.get("max_slots"),
        max_messages=body.get("max_messages", 1),
        total_slots=body.get("total_slots"),
        wait=body.get("wait", 0.0),
        grantee=None if scope.central else scope.name,
        still_valid=scope.still_valid,
        valid_until=scope.valid_until,
        # A worker credential registers only a worker it speaks for (its mailbox queue,
        # the other source of the name, passed check_consume).
        node=body.get("node") if scope.speaks_for((body.get("node") or {}).get("name", ""))
        else None,
    )
    metrics.record_deliveries([d.message for d in found])
    metrics.HANDED_OFF.inc(sum(d.handed for d in found))
    return {"messages": [{"queue": d.queue, "message": d.message} for d in found]}


@route("ack")
def ack(body: dict) -> dict:
    answer = _settle("ack", body, _services().broker.ack)
    metrics.ACKED.inc(answer["settled"])
    return answer


@route("reject")
def reject(body: dict) -> dict:
    requeue = body.get("requeue", False)
    answer = _settle("reject", body,
                     lambda s, t: _services().broker.reject(s, t, requeue=requeue))
    metrics.REJECTED.labels(str(requeue).lower()).inc(answer["settled"])
    return answer


def _settle(verb: str, body: dict, apply) -> dict:
    _own_session(body["session"], f"{verb}ing messages")
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
    _own_session(body["session"], "closing")
    return {"released": _services().broker.close_session(body["session"])}


@route("session/resume")
def session_resume(body: dict) -> dict:
    _own_session(body["session"], "resuming")
    released, unknown = _services().broker.resume_session(body["session"], body["held"])
    return {"released": released, "unknown": unknown[:MAX_BATCH]}


@route("session/wake")
def session_wake(body: dict) -> dict:
    _own_session(body["session"], "waking")
    _services().broker.signal(sessions=[body["session"]])
    return {}


# -- workers -----------------------------------------------------------------------------


@route("worker/heartbeat")
def worker_heartbeat(body: dict) -> dict:
    scope = _scope()
    scope.check_worker(body["name"], "heartbeating")
    return _services().workers.heartbeat(body, grantee=None if scope.central else scope.name)


@route("worker/deregister")
def worker_deregister(body: dict) -> dict:
    _scope().check_worker(body["name"], "deregistering")
    _services().workers.deregister(body["name"], body["instance"])
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
        except ValueError:  # binascii.Error, or characters beyond ASCII
            raise errors.InvalidRequest(
                "value: not valid base64 (encoding base64 takes A-Z, a-z, 0-9, +, / and "
                "= padding)") from None
    return body["value"].encode("utf-8")


def _check_results(keys: list[str], *, write: bool) -> None:
    scope = _scope()
    if scope.central:
        return
    refused = _services().grants.refused_keys(scope.name, keys, write=write)
    if refused:
        verb = "writing" if write else "reading"
        raise scope.forbid(f"{verb} result(s) {', '.join(map(repr, refused[:5]))}")


def _check_log(ti: TaskInstanceTry, verb: str) -> TaskInstanceTry:
    scope = _scope()
    if not scope.central and not _services().grants.holds_task_instance(scope.name, ti):
        raise scope.forbid(f"{verb} the log of {ti.dag_id}.{ti.task_id} {ti.run_id} "
                           f"(map {ti.map_index}, try {ti.try_number}), not a task delivered to it")
    return ti


@route("results/get")
def results_get(body: dict) -> dict:
    _check_results([body["key"]], write=False)
    return {"value": _encode_value(_services().results.get(body["key"]))}


@route("results/mget")
def results_mget(body: dict) -> dict:
    _check_results(body["keys"], write=False)
    return {"values": [_encode_value(v) for v in _services().results.mget(body["keys"])]}


@route("results/set")
def results_set(body: dict) -> dict:
    _check_results([body["key"]], write=True)
    stored = _services().results.set(body["key"], _decode_value(body),
                                     expires=body.get("expires"),
                                     keep_success=body.get("keep_success", False))
    return {"stored": stored}


@route("results/delete")
def results_delete(body: dict) -> dict:
    _check_results([body["key"]], write=True)
    _services().results.delete(body["key"])
    return {}


@route("results/incr")
def results_incr(body: dict) -> dict:
    _check_results([body["key"]], write=True)
    value = _services().results.incr(
        body["key"], body.get("amount", 1), expires=body.get("expires")
    )
    return {"value": value}


@route("results/expire")
def results_expire(body: dict) -> dict:
    _check_results([body["key"]], write=True)
    return {"found": _services().results.expire(body["key"], body.get("expires"))}


# -- task logs ---------------------------------------------------------------------------


@route("logs/push")
def logs_push(body: dict) -> dict:
    ti = _check_log(TaskInstanceTry.from_request(body), "pushing to")
    length = _services().logs.append(ti, body["offset"], body["data"], ti_id=body.get("ti_id"))
    return {"length": length}


@route("logs/read")
def logs_read(body: dict) -> dict:
    got = _services().logs.read(
        _check_log(TaskInstanceTry.from_request(body), "reading"), body.get("offset", 0),
        body.get("limit", MAX_LOG_READ),
    )
    return {"found": got.found, "data": got.data, "offset": got.offset,
            "next_offset": got.next_offset, "length": got.length}


# -- DAG bundles -------------------------------------------------------------------------


@route("bundles/resolve")
def bundles_resolve(body: dict) -> dict:
    store = _bundles()
    store.check_access(_scope(), body["name"])
    answer = store.resolve(body["name"], body.get("version")).describe()
    metrics.BUNDLE_RESOLVES.inc()
    return answer


assert set(_ROUTES) == set(REQUESTS), "every protocol route needs a handler"
