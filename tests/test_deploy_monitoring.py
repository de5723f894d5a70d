"""The shipped monitoring files (``deploy/monitoring/``) against a live API server.

Every metric name the alert rules and the Grafana dashboard use must be one a running
``edge-kombu api`` exports at ``GET /metrics`` (read from the server after a small workload,
not from a list kept here), and every label they select or group by one that metric
carries. The rules are also checked for their parts (expr, for, severity, summary) and,
where Debian's ``promtool`` is installed (CI installs it), by ``promtool check rules``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import requests
import yaml
from kombu import Connection, Exchange, Queue
from prometheus_client.parser import text_string_to_metric_families

from edge_kombu.protocol import HEADER_PROTOCOL, PROTOCOL_VERSION
from tests.conftest import IN_CI
from tests.helpers import ROOT

pytestmark = [pytest.mark.sqlite_only, pytest.mark.timeout(120)]

MONITORING = ROOT / "deploy" / "monitoring"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
SEVERITIES = {"critical", "warning", "info"}
#: Series Prometheus itself adds or makes: the scrape's target labels and ``up``.
TARGET_LABELS = {"instance", "job"}
FOREIGN_METRICS = {"up"}

METRIC = re.compile(r"\b(edge_kombu_[a-zA-Z0-9_]+)(\{[^}]*\})?")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
PROMQL_WORDS = {
    "sum", "max", "min", "avg", "count", "rate", "increase", "deriv", "delta",
    "histogram_quantile", "by", "without", "on", "ignoring", "and", "or", "unless", "offset",
    "vector", "absent", "le",
}


def live_metrics(api, token: str) -> dict[str, set[str]]:
    url = api.url.replace("http://", f"edge+http://:{token}@")
    with Connection(url) as conn:
        channel = conn.default_channel
        Queue("mon", Exchange("mon", "direct"), "mon", channel=channel).declare()
        producer = conn.Producer(channel)
        for i in range(2):
            producer.publish({"i": i}, exchange="mon", routing_key="mon")
        message = channel.basic_get("mon")
        channel.basic_reject(message.delivery_tag, requeue=True)
    answer = requests.post(
        f"{api.url}/api/v1/worker/heartbeat", timeout=10,
        headers={"Authorization": f"Bearer {token}", HEADER_PROTOCOL: PROTOCOL_VERSION},
        json={"name": "mon@host", "instance": "instance-1", "state": "running", "queues": ["mon"],
              "slots_total": 2, "slots_used": 1, "running": [],
              "sysinfo": {"cpu_percent": 1.0, "memory_percent": 2.0,
                          "memory_used_bytes": 3, "disk_free_bytes": 4,
                          "load_avg": [0.5, 0.4, 0.3]}})
    assert answer.status_code == 200, answer.text
    requests.get(f"{api.url}/metrics", timeout=10)  # so the histogram has a /metrics series
    answer = requests.get(f"{api.url}/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            labels.setdefault(sample.name, set()).update(sample.labels)
    return labels


def promql_problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What in one PromQL expression does not exist at the server: names, then labels."""
    problems = []
    used_labels: set[str] = set(TARGET_LABELS)
    names = METRIC.findall(expr)
    for name, selector in names:
        if name not in exported:
            problems.append(f"metric {name} is not exported")
            continue
        used_labels |= exported[name]
        for label in MATCHER.findall(selector):
            if label not in exported[name] | TARGET_LABELS:
                problems.append(f"{name} has no label {label!r}")
    for group in GROUPING.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in used_labels:
                problems.append(f"grouping by {label!r}, which no metric here carries")
    bare = GROUPING.sub(" ", METRIC.sub(" ", expr))
    bare = re.sub(r"\{[^}]*\}|\"[^\"]*\"|\[[^\]]*\]|\$\w+", " ", bare)
    for word in re.findall(r"\b[a-zA-Z_][a-zA-Z0-9_]*\b", bare):
        if word not in PROMQL_WORDS | FOREIGN_METRICS | used_labels and not re.fullmatch(
                r"\d*e\d+", word):
            problems.append(f"unknown name {word!r}")
    if not names and not FOREIGN_METRICS & set(re.findall(r"\w+", expr)):
        problems.append("uses no metric")
    return problems


def rules() -> list[dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_panels() -> list[dict]:
    def walk(panels):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))

    return list(walk(json.loads(DASHBOARD.read_text())["panels"]))


@pytest.fixture
def metrics(api_factory, token) -> dict[str, set[str]]:
    return live_metrics(api_factory(env={"EDGE_KOMBU_METRICS_AUTH": "none"}), token)


def checker_finds_what_the_server_does_not_export(metrics) -> None:
    assert promql_problems("max by (queue) (edge_kombu_queue_messages_ready) > 0", metrics) == []
    assert promql_problems("edge_kombu_queue_messages_waiting > 0", metrics) == [
        "metric edge_kombu_queue_messages_waiting is not exported"]
    assert promql_problems('edge_kombu_workers{status="idle"}', metrics) == [
        "edge_kombu_workers has no label 'status'"]
    assert promql_problems("max by (worker) (edge_kombu_queue_consumers)", metrics) == [
        "grouping by 'worker', which no metric here carries"]
    assert promql_problems("sum(rat(edge_kombu_messages_acked_total[5m]))", metrics) == [
        "unknown name 'rat'"]


def test_alerts_and_dashboard_use_only_what_the_server_exports(metrics):
    checker_finds_what_the_server_does_not_export(metrics)
    problems = {}
    for rule in rules():
        problems[f"alert {rule['alert']}"] = promql_problems(rule["expr"], metrics)
    for panel in dashboard_panels():
        for target in panel.get("targets", []):
            problems[f"panel {panel['title']} {target['refId']}"] = promql_problems(
                target["expr"], metrics)
    assert {where: found for where, found in problems.items() if found} == {}
    # The three families each have alerts and panels.
    alert_text = " ".join(rule["expr"] for rule in rules())
    panel_text = " ".join(t["expr"] for p in dashboard_panels() for t in p.get("targets", []))
    for family in ("edge_kombu_queue_", "edge_kombu_worker", "edge_kombu_http_request_"):
        assert family in alert_text, family
        assert family in panel_text, family


def test_every_alert_has_its_parts():
    names = []
    for rule in rules():
        names.append(rule["alert"])
        assert rule["expr"].strip(), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
    assert len(names) == len(set(names)) >= 10


def test_dashboard_is_valid_with_unique_panel_ids():
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] and dashboard["title"]
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    used = set(re.findall(r"\$\{?(\w+)", json.dumps(panels)))
    assert used <= variables | {"__all"}, used - variables


def test_promtool_accepts_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        if IN_CI:
            pytest.fail("promtool is missing (.ci/run installs Debian's prometheus package)")
        pytest.skip("promtool (Debian's prometheus package) is not installed")
    done = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout
