"""``GET /metrics`` of a real API server after a known workload, read with
prometheus-client's own parser."""

from __future__ import annotations

import pytest
import requests
from kombu import Connection, Exchange, Queue
from prometheus_client.parser import text_string_to_metric_families

from edge_kombu.protocol import HEADER_PROTOCOL, PROTOCOL_VERSION
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(120)

VIEWER = ("prom", "scrape-secret")


def scrape(api, auth=VIEWER) -> dict[tuple, float]:
    answer = requests.get(f"{api.url}/metrics", auth=auth, timeout=10)
    assert answer.status_code == 200, answer.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def heartbeat(api, token: str, body: dict) -> None:
    answer = requests.post(f"{api.url}/api/v1/worker/heartbeat", json=body, timeout=10,
                           headers={"Authorization": f"Bearer {token}",
                                    HEADER_PROTOCOL: PROTOCOL_VERSION})
    assert answer.status_code == 200, answer.text


def test_metrics_match_a_known_workload(api_factory, token):
    api = api_factory(env={"EDGE_KOMBU_UI_VIEWER": ":".join(VIEWER)})
    url = api.url.replace("http://", f"edge+http://:{token}@")
    before = scrape(api)
    with Connection(url) as conn:
        channel = conn.default_channel
        queue = Queue("mq", Exchange("mq", "direct"), "mq", channel=channel)
        queue.declare()
        producer = conn.Producer(channel)
        for i in range(5):
            producer.publish({"i": i}, exchange="mq", routing_key="mq")
        # Airflow multi-team: a team's queue and worker carry its name in a `team` label.
        Queue("team_a:mq", Exchange("team_a:mq", "direct"), "team_a:mq", channel=channel).declare()
        producer.publish({"i": 5}, exchange="team_a:mq", routing_key="team_a:mq")
        first, second, third = (channel.basic_get("mq") for _ in range(3))
        channel.basic_ack(first.delivery_tag)
        channel.basic_ack(second.delivery_tag)
        channel.basic_reject(third.delivery_tag, requeue=True)
        again = channel.basic_get("mq")  # the requeued message comes back first
        assert again.delivery_info["redelivered"]
        heartbeat(api, token, {
            "name": "m1@host", "instance": "instance-1", "state": "running", "queues": ["mq"],
            "slots_total": 4, "slots_used": 3, "running": [],
            "sysinfo": {"cpu_percent": 12.5, "memory_percent": 40.0,
                        "memory_used_bytes": 1024, "disk_free_bytes": 2048,
                        "load_avg": [0.5, 0.4, 0.3]},
        })
        heartbeat(api, token, {"name": "m2@host", "instance": "instance-2", "state": "idle",
                               "queues": ["team_a:mq"], "slots_total": 1,
                               "sysinfo": {"team_name": "team_a"}})
        # The transport sends acks from a background thread: wait until both arrived.
        acked = "edge_kombu_messages_acked_total"
        after = wait_for(lambda: (s := scrape(api)) and value(s, acked) - value(before, acked) == 2
                         and s, message="both acks counted")

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("edge_kombu_messages_published_total") == 6
    assert delta("edge_kombu_messages_delivered_total") == 4
    assert delta("edge_kombu_messages_redelivered_total") == 1
    assert delta("edge_kombu_messages_acked_total") == 2
    assert delta("edge_kombu_messages_rejected_total", requeue="true") == 1
    assert value(after, "edge_kombu_queue_messages_ready", queue="mq", team="") == 2
    assert value(after, "edge_kombu_queue_messages_ready", queue="team_a:mq", team="team_a") == 1
    assert value(after, "edge_kombu_queue_messages_leased", queue="mq", team="") == 1
    assert value(after, "edge_kombu_queue_oldest_message_age_seconds", queue="mq", team="") >= 0
    assert value(after, "edge_kombu_workers", state="running", team="") == 1
    assert value(after, "edge_kombu_workers", state="idle", team="team_a") == 1
    m1 = {"worker": "m1@host", "team": ""}
    assert value(after, "edge_kombu_worker_slots_used", **m1) == 3
    assert value(after, "edge_kombu_worker_slots_total", **m1) == 4
    assert value(after, "edge_kombu_worker_slots_total", worker="m2@host", team="team_a") == 1
    assert value(after, "edge_kombu_worker_cpu_percent", **m1) == 12.5
    assert value(after, "edge_kombu_worker_disk_free_bytes", **m1) == 2048
    assert value(after, "edge_kombu_worker_load1", **m1) == 0.5
    publishes = delta("edge_kombu_http_request_duration_seconds_count",
                      endpoint="/api/v1/publish", method="POST", status="200")
    assert publishes == 6
    assert delta("edge_kombu_http_request_duration_seconds_bucket", endpoint="/api/v1/publish",
                 method="POST", status="200", le="+Inf") == 6


def test_metrics_access_is_configurable(api_factory, token):
    guarded = api_factory(env={"EDGE_KOMBU_UI_VIEWER": ":".join(VIEWER)})
    assert requests.get(f"{guarded.url}/metrics", timeout=10).status_code == 401
    worker_token = requests.get(f"{guarded.url}/metrics", timeout=10,
                                headers={"Authorization": f"Bearer {token}"})
    assert worker_token.status_code == 401
    open_ = api_factory(env={"EDGE_KOMBU_METRICS_AUTH": "none"})
    assert "edge_kombu_workers" in requests.get(f"{open_.url}/metrics", timeout=10).text


def test_several_server_processes_add_up_their_counters(api_factory, token):
    api = api_factory(env={"EDGE_KOMBU_METRICS_AUTH": "none"}, extra=["--workers", "2"])
    url = api.url.replace("http://", f"edge+http://:{token}@")
    before = scrape(api, auth=None)
    with Connection(url) as conn:
        producer = conn.Producer(conn.default_channel)
        for i in range(20):  # on new connections, spread over both processes
            producer.publish({"i": i}, routing_key="multi", declare=[Queue("multi")])
    published = "edge_kombu_messages_published_total"
    assert value(scrape(api, auth=None), published) - value(before, published) == 20
