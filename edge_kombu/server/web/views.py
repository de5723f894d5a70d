"""Routes of the monitoring pages and their actions (``/ui/...``).

Pages render on the server; a small script refreshes the live part every few seconds
by asking for the same URL with ``X-Partial: 1``. Times are sent as ISO 8601 UTC and
shown in the browser's timezone. Actions call the same
:class:`~edge_kombu.server.workers.WorkerRegistry` methods as ``edge-kombu worker …``,
naming the signed-in user as the actor the audit log records.
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for

from edge_kombu import __version__, errors
from edge_kombu.protocol import MAX_INT64, MAX_NAME_LENGTH
from edge_kombu.server.audit import Actor
from edge_kombu.server.jobs import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, STATES, is_internal_queue
from edge_kombu.server.web.access import ADMIN, current_user, require_admin
from edge_kombu.server.workers import GONE

bp = Blueprint("edge_ui", __name__, url_prefix="/ui", template_folder="templates")

#: Seconds between refreshes of a page's live part.
REFRESH_SECONDS = 5
#: Audit entries the Worker hosts page shows.
RECENT_ACTIONS = 20
#: Longest comment an action may carry (the audit log's and maintenance comment's column).
COMMENT_LENGTH = 1024


def _services():
    return current_app.extensions["edge_kombu"]


@bp.app_template_filter("iso")
def iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


@bp.app_template_filter("age")
def age(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _measure(value, top: float) -> bool:
    """Whether a worker-reported value is a number the pages can show (0 to ``top``)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= top


@bp.app_template_filter("percent")
def percent(value) -> str:
    return f"{value:.0f} %" if _measure(value, 1e6) else "—"


@bp.app_template_filter("bytes")
def human_bytes(value) -> str:
    if not _measure(value, 2**80):
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def spark(values: list, width: int = 180, height: int = 36) -> str:
    """SVG polyline points of a series (gaps skipped), scaled to its own maximum."""
    top = max([v for v in values if v is not None] + [1])
    step = width / max(len(values) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}"
        for i, v in enumerate(values) if v is not None
    )


def _render(page: str, **context):
    user = current_user()
    context.update(user=user, is_admin=user.role == ADMIN, page=page, version=__version__,
                   refresh=REFRESH_SECONDS, now=_services().sql.clock())
    if request.headers.get("X-Partial"):
        return render_template(f"edge_kombu/_{page}.html", **context)
    return render_template(f"edge_kombu/{page}.html", **context)


@bp.get("/")
def index():
    current_user()
    return redirect(url_for("edge_ui.workers"))


def _edge_kombu_version(worker: dict) -> str | None:
    """The edge-kombu version a worker reported, if it reported one as text."""
    versions = worker["versions"]
    version = versions.get("edge_kombu") if isinstance(versions, dict) else None
    return version if isinstance(version, str) else None


@bp.get("/workers")
def workers():
    services = _services()
    fleet = services.workers.list()
    versions = {_edge_kombu_version(w) for w in fleet if w["state"] not in GONE}
    versions.discard(None)
    # Who did what: the latest actions, of one worker with ?worker=NAME.
    actions_of = request.args.get("worker") or None
    if actions_of is not None and len(actions_of) > MAX_NAME_LENGTH:  # (NUL: refused for any URL)
        raise errors.InvalidRequest(f"worker: a name of at most {MAX_NAME_LENGTH} characters")
    actions = services.audit.recent(target=actions_of, limit=RECENT_ACTIONS)
    return _render("workers", workers=fleet, gone=GONE, server_version=__version__,
                   mixed_versions=len(versions) > 1, actions=actions, actions_of=actions_of)


@bp.get("/jobs")
def jobs():
    args = request.args
    state = args.get("state") or None
    if state is not None and state not in STATES:
        raise errors.InvalidRequest(f"state must be one of {', '.join(STATES)}, got {state!r}")
    try:
        before = int(args["before"]) if args.get("before") else None
        limit = int(args.get("limit") or DEFAULT_PAGE_SIZE)
    except ValueError:
        raise errors.InvalidRequest("before and limit must be integers") from None
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise errors.InvalidRequest(f"limit must be 1 to {MAX_PAGE_SIZE}, got {limit}")
    if before is not None and not 0 <= before <= MAX_INT64:
        raise errors.InvalidRequest(f"before must be 0 to {MAX_INT64}")
    filters = {"state": state, "queue": args.get("queue") or None,
               "worker": args.get("worker") or None, "text": args.get("q") or None}
    history = _services().jobs
    result = history.page(before=before, limit=limit, **filters)
    return _render("jobs", result=result, filters=filters, facets=history.facets(),
                   before=before, limit=limit)


@bp.get("/queues")
def queues():
    services = _services()
    show_all = bool(request.args.get("all"))
    history = services.jobs.history()
    rows = []
    for q in services.workers.queue_report():
        if is_internal_queue(q["name"]) and not show_all:
            continue
        series = history["queues"].get(q["name"], {"ready": [None] * 60, "done": [0] * 60})
        series["ready"][-1] = q["ready"]  # this minute: now, not the last sample
        rows.append(dict(
            q, depth_points=spark(series["ready"]), done_points=spark(series["done"]),
            depth_max=max([v for v in series["ready"] if v is not None] + [0]),
            done_last_hour=sum(series["done"]),
        ))
    return _render("queues", queues=rows, show_all=show_all)


# -- actions (admins only) -----------------------------------------------------------------


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise errors.InvalidRequest("send a JSON object (Content-Type: application/json)")
    return body


def _comment(body: dict) -> str | None:
    comment = body.get("comment")
    if comment is None:
        return None
    if not isinstance(comment, str) or "\0" in comment or len(comment) > COMMENT_LENGTH:
        raise errors.InvalidRequest(
            f"comment: text without NUL, of at most {COMMENT_LENGTH} characters")
    return comment


@bp.post("/actions/workers/<name>/<action>")
def worker_action(name: str, action: str):
    user = require_admin()
    actor = Actor(user.name, current_app.extensions["edge_kombu_access"].via)
    registry = _services().workers
    body = _body()
    comment = _comment(body)
    if action == "maintenance":
        on = body.get("on")
        if not isinstance(on, bool):
            raise errors.InvalidRequest("on: must be true or false")
        worker = registry.request_maintenance(name, on, comment, actor=actor)
    elif action == "maintenance-comment":
        worker = registry.update_maintenance_comment(name, comment or "", actor=actor)
    elif action == "shutdown":
        worker = registry.request_shutdown(name, actor=actor, comment=comment)
    elif action == "remove":
        registry.remove(name, actor=actor, comment=comment)
        return jsonify(removed=name)
    elif action == "queues":
        add, remove = body.get("add") or [], body.get("remove") or []
        if not (isinstance(add, list) and isinstance(remove, list)
                and all(isinstance(q, str) for q in [*add, *remove])):
            raise errors.InvalidRequest("add, remove: lists of queue names")
        worker = registry.change_queues(name, add=add, remove=remove, actor=actor,
                                        comment=comment)
    elif action == "concurrency":
        value = body.get("concurrency")
        if isinstance(value, bool) or not isinstance(value, int):
            raise errors.InvalidRequest("concurrency: an integer >= 1")
        worker = registry.set_concurrency(name, value, actor=actor, comment=comment)
    else:
        raise errors.NotFound(
            f"no action {action!r}; one of maintenance, maintenance-comment, shutdown, remove, "
            "queues, concurrency")
    return jsonify(worker=worker)
