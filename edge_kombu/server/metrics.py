"""Prometheus metrics of the edge API: ``GET /metrics``.

Counters and the request-latency histogram live in the API processes; with several
gunicorn processes (``edge-kombu api --workers N``) they are shared through
prometheus-client's multiprocess mode, which ``edge-kombu api`` switches on by itself
(``PROMETHEUS_MULTIPROC_DIR``, a fresh directory per server). Queue, worker and
heartbeat gauges are read from the database at scrape time, so every process reports
the same fleet.

Access (``EDGE_KOMBU_METRICS_AUTH``): ``basic`` (default) asks for the web pages'
viewer or admin credentials (HTTP Basic), ``none`` serves it openly (for a scraper on
a trusted network). Worker tokens never open it.
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from edge_kombu.protocol import API_PATH, REQUESTS, WORKER_OFFLINE, WORKER_OFFLINE_MAINTENANCE
from edge_kombu.server.workers import reported_team
from edge_kombu.teams import team_of

ENV_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

# The *_created series double the output for nothing a dashboard uses.
disable_created_metrics()

# Not registered globally: each app builds the registry it serves (see registry()).
PUBLISHED = Counter("edge_kombu_messages_published_total",
                    "Message copies stored by publishes (one per queue reached).", registry=None)
PUBLISH_REPEATS = Counter("edge_kombu_publish_repeats_total",
                          "Publishes recognised as repeats within the dedupe window (not "
                          "stored again).", registry=None)
DELIVERED = Counter("edge_kombu_messages_delivered_total",
                    "Messages handed to consumers.", registry=None)
REDELIVERED = Counter("edge_kombu_messages_redelivered_total",
                      "Messages handed to consumers again (redelivered=True).", registry=None)
HANDED_OFF = Counter("edge_kombu_messages_handed_off_total",
                     "Messages leased to a waiting consume by the publish that stored them "
                     "(delivered without a claim of their own).", registry=None)
ACKED = Counter("edge_kombu_messages_acked_total", "Messages acknowledged.", registry=None)
REJECTED = Counter("edge_kombu_messages_rejected_total", "Messages rejected by consumers.",
                   ["requeue"], registry=None)
LEASES_EXPIRED = Counter(
    "edge_kombu_lease_expiries_total",
    "Leased messages released for redelivery because their consumer went silent.",
    registry=None)
SESSIONS_EXPIRED = Counter("edge_kombu_sessions_expired_total",
                           "Consumer sessions closed for silence.", registry=None)
BUNDLE_RESOLVES = Counter("edge_kombu_bundle_resolves_total",
                          "DAG bundle versions resolved for edge workers (a resolve without a "
                          "download is a cache hit on the worker).", registry=None)
BUNDLE_ARCHIVES = Counter("edge_kombu_bundle_downloads_total",
                          "DAG bundle archives served to edge workers.", registry=None)
BUNDLE_BYTES = Counter("edge_kombu_bundle_download_bytes_total",
                       "Bytes of DAG bundle archives served to edge workers.", registry=None)
REQUEST_SECONDS = Histogram(
    "edge_kombu_http_request_duration_seconds",
    "Time to answer an HTTP request (a consume includes its long-poll wait).",
    ["endpoint", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=None)

_PROCESS_METRICS = (PUBLISHED, PUBLISH_REPEATS, DELIVERED, REDELIVERED, HANDED_OFF, ACKED,
                    REJECTED, LEASES_EXPIRED, SESSIONS_EXPIRED, BUNDLE_RESOLVES,
                    BUNDLE_ARCHIVES, BUNDLE_BYTES, REQUEST_SECONDS)

bp = Blueprint("edge_metrics", __name__)


def record_reap(counts: dict) -> None:
    LEASES_EXPIRED.inc(counts.get("leases_released", 0))
    SESSIONS_EXPIRED.inc(counts.get("sessions_expired", 0))


def record_deliveries(messages: list[dict]) -> None:
    DELIVERED.inc(len(messages))
    REDELIVERED.inc(sum(
        1 for msg in messages
        if msg["properties"].get("delivery_info", {}).get("redelivered")
    ))


class FleetCollector:
    """Gauges read from the database at scrape time: queues, workers, heartbeats."""

    def __init__(self, broker, workers) -> None:
        self.broker = broker
        self.workers = workers

    def collect(self):
        # ``team``: the Airflow team whose queue or worker it is ("" for none; see
        # edge_kombu.teams), so a multi-team site can sum and alert per team.
        queues = self.broker.queue_overview()
        ready = GaugeMetricFamily("edge_kombu_queue_messages_ready",
                                  "Messages waiting in the queue.", labels=["queue", "team"])
        leased = GaugeMetricFamily("edge_kombu_queue_messages_leased",
                                   "Messages delivered and not yet acknowledged.",
                                   labels=["queue", "team"])
        oldest = GaugeMetricFamily("edge_kombu_queue_oldest_message_age_seconds",
                                   "Age of the oldest waiting message (0 when empty).",
                                   labels=["queue", "team"])
        consumers = GaugeMetricFamily("edge_kombu_queue_consumers",
                                      "Live consumer sessions on the queue.",
                                      labels=["queue", "team"])
        for q in queues:
            labels = [q["name"], team_of(q["name"]) or ""]
            ready.add_metric(labels, q["ready"])
            leased.add_metric(labels, q["leased"])
            oldest.add_metric(labels, q["oldest_age"] or 0.0)
            consumers.add_metric(labels, q["consumers"])
        yield from (ready, leased, oldest, consumers)

        fleet = self.workers.list()
        by_state = GaugeMetricFamily("edge_kombu_workers", "Edge workers by state.",
                                     labels=["state", "team"])
        counts: dict[tuple[str, str], int] = {}
        for w in fleet:
            key = (w["state"], _team(w))
            counts[key] = counts.get(key, 0) + 1
        for labels, count in sorted(counts.items()):
            by_state.add_metric(list(labels), count)
        yield by_state
        per_worker = {
            "slots_used": ("edge_kombu_worker_slots_used", "Slots taken by running tasks."),
            "slots_total": ("edge_kombu_worker_slots_total", "The worker's slot budget."),
            "heartbeat_age": ("edge_kombu_worker_heartbeat_age_seconds",
                              "Seconds since the worker's last heartbeat."),
            "cpu_percent": ("edge_kombu_worker_cpu_percent", "Host CPU use (heartbeat)."),
            "memory_percent": ("edge_kombu_worker_memory_percent",
                               "Host memory use (heartbeat)."),
            "memory_used_bytes": ("edge_kombu_worker_memory_used_bytes",
                                  "Host memory used (heartbeat)."),
            "disk_free_bytes": ("edge_kombu_worker_disk_free_bytes",
                                "Free disk space where the worker runs (heartbeat)."),
            "load1": ("edge_kombu_worker_load1", "Host 1-minute load average (heartbeat)."),
        }
        families = {key: GaugeMetricFamily(name, doc, labels=["worker", "team"])
                    for key, (name, doc) in per_worker.items()}
        for w in fleet:
            if w["state"] in (WORKER_OFFLINE, WORKER_OFFLINE_MAINTENANCE):
                continue
            values = dict(w["sysinfo"], slots_used=w["slots_used"],
                          slots_total=w["slots_total"], heartbeat_age=w["heartbeat_age"])
            if w["sysinfo"].get("load_avg"):
                values["load1"] = w["sysinfo"]["load_avg"][0]
            for key, family in families.items():
                if isinstance(values.get(key), (int, float)):
                    family.add_metric([w["name"], _team(w)], values[key])
        yield from families.values()


def _team(worker: dict) -> str:
    return reported_team(worker["sysinfo"]) or ""


def registry_for(services) -> CollectorRegistry:
    """The registry ``/metrics`` serves: this process's (or all processes') plus the fleet."""
    registry = CollectorRegistry(auto_describe=False)
    if os.environ.get(ENV_MULTIPROC_DIR):
        MultiProcessCollector(registry)
    else:
        for metric in _PROCESS_METRICS:
            registry.register(metric)
    registry.register(FleetCollector(services.broker, services.workers))
    return registry


def install(app: Flask, services) -> None:
    """Serve ``/metrics`` and time every request."""
    app.extensions["edge_kombu_metrics"] = registry_for(services)
    app.register_blueprint(bp)

    @app.before_request
    def _start_timer():
        g.edge_started = time.perf_counter()

    @app.after_request
    def _observe(response):
        started = g.pop("edge_started", None)
        if started is not None:
            REQUEST_SECONDS.labels(_endpoint(), request.method, str(response.status_code)) \
                .observe(time.perf_counter() - started)
        return response


def _endpoint() -> str:
    """The route, not the URL: ``/api/v1/consume``, ``/ui/workers``; unknown paths as one."""
    if request.url_rule is None:
        return "unmatched"
    if request.endpoint == "edge_api.dispatch":
        name = request.view_args.get("name", "")
        return f"{API_PATH}/{name}" if name in REQUESTS else "unmatched"
    return request.url_rule.rule


@bp.get("/metrics")
def metrics():
    from edge_kombu.server.web.access import require_metrics_access

    require_metrics_access()
    registry = current_app.extensions["edge_kombu_metrics"]
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
