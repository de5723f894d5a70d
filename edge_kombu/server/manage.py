"""The management REST API (``/api/v1/manage/``): JSON for the admins' own automation.

The same services as ``edge-kombu worker …``, ``edge-kombu token …`` and the pages'
actions (:class:`~edge_kombu.server.workers.WorkerRegistry`,
:class:`~edge_kombu.server.credentials.Credentials`,
:class:`~edge_kombu.server.jobs.JobHistory`): workers listed, read and acted on (one or
many at a time), the queues overview, the jobs with the Jobs page's filters and paging,
tokens issued, listed and revoked. Every action is in the audit log with its actor.

Who may call it:

* an admin token (``edge-kombu token create --admin NAME``), recorded as ``via api``;
* the pages' signed-in user (HTTP Basic standalone, Airflow's session or token when mounted
  in ``airflow api-server``): admins may do everything, viewers may only read workers,
  queues and jobs. Their changes must be JSON requests (a cross-site form cannot send one
  without the browser asking first) from the same origin.

Worker tokens are refused (403), and so are central tokens: a scheduler's credential moves
tasks, an admin's manages the fleet (separation of duties). An admin token may in turn use
no broker route.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from flask import Blueprint, current_app, jsonify, request
from jsonschema import Draft202012Validator

from edge_kombu import errors
from edge_kombu.protocol import (
    API_PATH,
    MAX_INT64,
    MAX_NAME_LENGTH,
    MAX_SLOTS,
    NO_NUL,
    WORKER_STATES,
)
from edge_kombu.server.audit import Actor
from edge_kombu.server.credentials import TOKEN_PREFIX
from edge_kombu.server.jobs import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, STATES, is_internal_queue
from edge_kombu.server.scopes import KINDS
from edge_kombu.server.validation import check
from edge_kombu.server.web.access import ADMIN, NotSignedIn, current_user
from edge_kombu.teams import MAX_TEAM_NAME

MANAGE_PATH = f"{API_PATH}/manage"
bp = Blueprint("edge_manage", __name__, url_prefix=MANAGE_PATH)

#: Longest comment an action may carry (the audit log's and maintenance comment's column).
COMMENT_LENGTH = 1024
#: Most workers one bulk request acts on; most queues one request adds or removes.
MAX_BULK = 100
MAX_QUEUES = 100
#: Longest token lifetime a request may ask for (seconds: ten years).
MAX_EXPIRES = 10 * 365 * 86400

_HOW = "or send 'Authorization: Bearer <admin token>' (edge-kombu token create --admin NAME)"

# -- request schemas (validated here, published in the OpenAPI document) ---------------------

_TEXT = {"type": "string", "maxLength": MAX_NAME_LENGTH, "pattern": NO_NUL}
_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH, "pattern": NO_NUL}
_COMMENT = {"type": "string", "maxLength": COMMENT_LENGTH, "pattern": NO_NUL,
            "description": "Why: recorded in the audit log."}
_QUEUE_LIST = {"type": "array", "items": _NAME, "maxItems": MAX_QUEUES}


def _body(required: list[str] | None = None, **properties) -> dict:
    return {"type": "object", "additionalProperties": False, "required": required or [],
            "properties": {**properties, "comment": _COMMENT}}


#: The body of each worker action, without the worker's name (in the path).
ACTIONS: dict[str, dict] = {
    "maintenance": {
        **_body(["on"], on={"type": "boolean", "description": "true: enter maintenance "
                            "(needs a comment); false: leave it."}),
        "if": {"properties": {"on": {"const": True}}},
        "then": {"required": ["comment"], "properties": {"comment": {"minLength": 1}}},
    },
    "maintenance-comment": {**_body(["comment"]), "properties": {
        "comment": {**_COMMENT, "minLength": 1,
                    "description": "The new maintenance comment (recorded in the audit log)."}}},
    "shutdown": _body(),
    "remove": _body(),
    "queues": {**_body(add=_QUEUE_LIST, remove=_QUEUE_LIST),
               "anyOf": [{"required": ["add"], "properties": {"add": {"minItems": 1}}},
                         {"required": ["remove"], "properties": {"remove": {"minItems": 1}}}],
               "description": "give a non-empty add and/or remove list"},
    "concurrency": _body(["concurrency"], concurrency={"type": "integer", "minimum": 1,
                                                       "maximum": MAX_SLOTS}),
}
SUMMARIES = {
    "maintenance": "Ask a worker to enter (with a comment) or leave maintenance.",
    "maintenance-comment": "Replace the comment of a worker in maintenance (409 if it is not).",
    "shutdown": "Ask a worker to finish its tasks and exit.",
    "remove": "Forget an offline or unknown worker.",
    "queues": "Add queues to, or remove queues from, what a worker consumes.",
    "concurrency": "Set a worker's slot budget.",
}


def _bulk(schema: dict) -> dict:
    return {**schema, "required": ["names", *schema["required"]],
            "properties": {"names": {"type": "array", "items": _NAME, "minItems": 1,
                                     "maxItems": MAX_BULK, "uniqueItems": True},
                           **schema["properties"]}}


BULK = {action: _bulk(schema) for action, schema in ACTIONS.items()}
TOKEN_CREATE = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "properties": {
        "name": {**_NAME, "description": "Worker name or pattern (kind worker), or any name."},
        "kind": {"enum": list(KINDS), "default": "worker"},
        "queues": {**_QUEUE_LIST, "description": "Worker: queues it may consume and publish "
                   "to (default: celery)."},
        "publish": {**_QUEUE_LIST, "description": "Worker: further queues it may publish to."},
        "team": {"type": "string", "minLength": 1, "maxLength": MAX_TEAM_NAME,
                 "pattern": "^[^:\\x00]+$",
                 "description": "Worker: its Airflow team (multi-team mode); its queues and "
                 "publish queues are that team's."},
        "expires": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_EXPIRES,
                    "description": "Lifetime in seconds (default: never expires)."},
        "no_token": {"type": "boolean", "description": "Worker: record the scope for its "
                     "shared-secret or OIDC JWTs only; issue no token."},
    },
}
_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in
               [*((f"action {a}", s) for a, s in ACTIONS.items()),
                *((f"bulk {a}", s) for a, s in BULK.items()),
                ("token create", TOKEN_CREATE)]}

#: Query parameters of the reads: name -> (schema, parser).
_INT = re.compile(r"[0-9]{1,19}")


def _integer(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, text: str) -> int:
        value = int(text) if _INT.fullmatch(text) else None
        if value is None or not low <= value <= high:
            raise errors.InvalidRequest(f"query parameter {name}: an integer {low} to {high}")
        return value

    return parse


def _text(name: str, text: str) -> str:
    if not 1 <= len(text) <= MAX_NAME_LENGTH:
        raise errors.InvalidRequest(
            f"query parameter {name}: 1 to {MAX_NAME_LENGTH} characters")
    return text


def _one_of(values) -> Callable[[str, str], str]:
    def parse(name: str, text: str) -> str:
        if text not in values:
            raise errors.InvalidRequest(
                f"query parameter {name}: one of {', '.join(map(repr, values))}")
        return text

    return parse


def _boolean(name: str, text: str) -> bool:
    if text not in ("true", "false"):
        raise errors.InvalidRequest(f"query parameter {name}: true or false")
    return text == "true"


_TEXT_PARAM = ({"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH,
                "pattern": NO_NUL}, _text)
QUERIES: dict[str, dict[str, tuple[dict, Callable]]] = {
    "workers": {
        "state": ({"enum": list(WORKER_STATES)}, _one_of(WORKER_STATES)),
        "name": (dict(_TEXT_PARAM[0], description="An fnmatch pattern (site-*)."), _text),
        "queue": (dict(_TEXT_PARAM[0], description="Workers consuming (or asked to consume) "
                       "this queue."), _text),
    },
    "jobs": {
        "state": ({"enum": list(STATES)}, _one_of(STATES)),
        "queue": _TEXT_PARAM,
        "worker": _TEXT_PARAM,
        "q": (dict(_TEXT_PARAM[0], description="Text in the task id, name, DAG, task or "
                   "run id."), _text),
        "before": ({"type": "integer", "minimum": 0, "maximum": MAX_INT64,
                    "description": "The previous page's 'next'."}, _integer(0, MAX_INT64)),
        "limit": ({"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE,
                   "default": DEFAULT_PAGE_SIZE}, _integer(1, MAX_PAGE_SIZE)),
    },
    "queues": {
        "all": ({"type": "boolean", "default": False,
                 "description": "Also Celery's internal queues (pidbox, events, replies)."},
                _boolean),
    },
}


def _query(route: str) -> dict:
    """The route's query parameters, parsed; unknown or repeated ones are refused."""
    known = QUERIES[route]
    parsed = {}
    for name in request.args:
        if name not in known:
            raise errors.InvalidRequest(
                f"unknown query parameter {name[:64]!r}; allowed: {', '.join(known)}")
        values = request.args.getlist(name)
        if len(values) > 1:
            raise errors.InvalidRequest(f"query parameter {name}: give it once")
        parsed[name] = known[name][1](name, values[0])
    return parsed


# -- who calls ------------------------------------------------------------------------------


def _services():
    return current_app.extensions["edge_kombu"]


def _caller(*, act: bool, admins_only: bool = False) -> Actor:
    """The admin token's or signed-in user's actor; ``act``: a change, not a read;
    ``admins_only``: a read viewers may not do either."""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() == "bearer" and credential.strip().startswith(TOKEN_PREFIX):
        scope = _services().auth.authenticate(header, "manage")
        if not scope.admin:
            kind = "central" if scope.central else "worker"
            raise errors.Forbidden(
                f"the management API needs an admin credential; {scope.name!r} is a {kind} "
                "token (create an admin one with 'edge-kombu token create --admin NAME')")
        actor = Actor(scope.name, "api")
    else:
        try:
            user = current_user()
        except NotSignedIn as exc:
            if exc.status == 401 or not header:
                raise errors.AuthenticationFailed(f"{exc.message}; {_HOW}") from None
            raise errors.Forbidden(f"{exc.message}; {_HOW}") from None
        if user.role != ADMIN and (act or admins_only):
            raise errors.Forbidden(f"user {user.name!r} may look but not act (viewer)")
        origin = request.headers.get("Origin")
        if act and origin and urlsplit(origin).netloc != request.host:
            raise errors.Forbidden(f"cross-origin request from {origin[:200]} refused")
        actor = Actor(user.name, current_app.extensions["edge_kombu_access"].via)
    return actor


def _json(validator: str) -> dict:
    if not request.is_json:
        raise errors.InvalidRequest("Content-Type must be application/json")
    body = request.get_json(silent=True)
    if body is None:
        raise errors.InvalidRequest("request body is not valid JSON")
    return check(_VALIDATORS[validator], body)


def _route(rule: str, **options):
    """A route whose doubled slashes are not merged (a redirect would hide an empty name)."""
    return bp.route(rule, merge_slashes=False, **options)


# -- workers ----------------------------------------------------------------------------------


@_route("/workers", methods=["GET"])
def workers_list():
    _caller(act=False)
    query = _query("workers")
    found = _services().workers.list(states=[query["state"]] if "state" in query else ())
    if "name" in query:
        found = [w for w in found if fnmatchcase(w["name"], query["name"])]
    if "queue" in query:
        found = [w for w in found
                 if query["queue"] in (w["desired_queues"] or []) + w["queues"]]
    return jsonify(workers=found)


@_route("/workers/<path:name>", methods=["GET"])
def worker_get(name: str):
    _caller(act=False)
    return jsonify(worker=_services().workers.get(name))


def _act(name: str, action: str, body: dict, actor: Actor) -> dict:
    """One worker action through the registry (as the CLI and pages do); the worker after
    it (``None`` once removed)."""
    registry = _services().workers
    comment = body.get("comment")
    if action == "maintenance":
        return registry.request_maintenance(name, body["on"], comment, actor=actor)
    if action == "maintenance-comment":
        return registry.update_maintenance_comment(name, comment, actor=actor)
    if action == "shutdown":
        return registry.request_shutdown(name, actor=actor, comment=comment)
    if action == "remove":
        registry.remove(name, actor=actor, comment=comment)
        return None
    if action == "queues":
        add, remove = body.get("add") or [], body.get("remove") or []
        return registry.change_queues(name, add=add, remove=remove, actor=actor,
                                      comment=comment)
    return registry.set_concurrency(name, body["concurrency"], actor=actor, comment=comment)


def _action(action: str):
    def view(name: str):
        actor = _caller(act=True)
        worker = _act(name, action, _json(f"action {action}"), actor)
        return jsonify(removed=name) if worker is None else jsonify(worker=worker)

    view.__name__ = f"worker_{action.replace('-', '_')}"
    return view


for _name in ACTIONS:
    _route(f"/workers/<path:name>/{_name}", methods=["POST"])(_action(_name))


def _bulk_action(action: str):
    def view():
        actor = _caller(act=True)
        body = _json(f"bulk {action}")
        results = []
        for name in body["names"]:
            try:
                worker = _act(name, action, body, actor)
            except errors.EdgeError as exc:
                results.append({"name": name, "ok": False, **exc.to_json()})
            else:
                results.append({"name": name, "ok": True, "worker": worker})
        return jsonify(results=results)

    view.__name__ = f"bulk_{action.replace('-', '_')}"
    return view


for _name in ACTIONS:
    _route(f"/bulk/workers/{_name}", methods=["POST"])(_bulk_action(_name))


# -- queues and jobs --------------------------------------------------------------------------


@_route("/queues", methods=["GET"])
def queues():
    _caller(act=False)
    show_all = _query("queues").get("all", False)
    return jsonify(queues=[q for q in _services().workers.queue_report()
                           if show_all or not is_internal_queue(q["name"])])


@_route("/jobs", methods=["GET"])
def jobs():
    _caller(act=False)
    query = _query("jobs")
    return jsonify(_services().jobs.page(
        state=query.get("state"), queue=query.get("queue"), worker=query.get("worker"),
        text=query.get("q"), before=query.get("before"),
        limit=query.get("limit", DEFAULT_PAGE_SIZE)))


# -- tokens -----------------------------------------------------------------------------------


@_route("/tokens", methods=["GET"])
def tokens_list():
    _caller(act=False, admins_only=True)
    return jsonify(tokens=_services().credentials.list())


@_route("/tokens", methods=["POST"])
def token_create():
    actor = _caller(act=True)
    body = _json("token create")
    kind = body.get("kind", "worker")
    token = _services().credentials.create(
        body["name"], kind=kind, queues=body.get("queues"), publish=body.get("publish", ()),
        expires=body.get("expires"), issue_token=not body.get("no_token", False), actor=actor,
        team=body.get("team"))
    return jsonify(name=body["name"], kind=kind, token=token), 201


@_route("/tokens/<path:name>", methods=["DELETE"])
def token_revoke(name: str):
    actor = _caller(act=True)
    _services().credentials.revoke(name, actor=actor)
    return jsonify(revoked=name)
