"""The benchmark harness in quick mode (seconds, tiny N), so it cannot rot unnoticed.

Real API servers, real Celery workers, the real load generator; the numbers are not
checked against targets here (that is what ``python -m bench`` and docs/benchmarks.md
are for), only that every benchmark produces complete, plausible results.
"""

from __future__ import annotations

import json

import psutil
import pytest
import requests

from bench import __main__ as cli
from bench import env, report
from tests.helpers import wait_for


def _results(out, name) -> dict:
    return json.loads((out / f"{name}-quick.json").read_text())


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-results")


def test_brokers_quick(out):
    assert cli.main(["brokers", "--quick", "--brokers", "edge-sqlite", "--out", str(out)]) == 0
    data = _results(out, "brokers")
    row = data["brokers"]["edge-sqlite"]
    assert row["latency"]["n"] == 20 and 0 < row["latency"]["p50_ms"] <= row["latency"]["p99_ms"]
    assert row["throughput_1"]["tasks_per_s"] > 0 and row["throughput_4"]["tasks_per_s"] > 0
    assert row["publishing"]["n"] == 40
    assert row["publishing"]["publishes_per_s"] > 0 < row["publishing"]["end_to_end_tasks_per_s"]
    assert any("celery -A bench.app worker -P threads -c 8" in c for c in data["commands"])
    assert not any("ekt_" in c for c in data["commands"]), "tokens stay out of the output"


def test_idle_quick_worker_heartbeat_events_are_not_sent_to_nobody(out):
    assert cli.main(["idle", "--quick", "--out", str(out)]) == 0
    data = _results(out, "idle")
    assert {"consume", "worker/heartbeat"} <= set(data["routes"])
    # Celery publishes a worker-heartbeat event every 2 s; nothing is bound to it, so after
    # the first unrouted one the transport keeps them for 10 s (0.5/s without that).
    assert data["routes"].get("publish", {"requests_per_s": 0})["requests_per_s"] < 0.3


def test_scale_quick(out):
    assert cli.main(["scale", "--quick", "--out", str(out)]) == 0
    run = _results(out, "scale")["runs"][0]
    assert run["polling"] == run["workers"] == 10 and run["errors"] == 0
    assert run["load"]["received"] == run["load"]["sent"] > 0
    assert run["idle"]["requests_per_s"] > 0 and run["idle"]["server_rss_mb"] > 0


@pytest.mark.postgres
def test_scale_quick_two_api_processes_on_postgres(out, tmp_path):
    assert cli.main(["scale", "--quick", "--api-workers", "2", "--db", "postgres",
                     "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "scale-quick.json").read_text())
    run = data["runs"][0]
    assert data["api_workers"] == run["api_workers"] == 2 and run["db"] == "postgres"
    assert run["polling"] == run["workers"] == 10 and run["errors"] == 0
    assert run["load"]["received"] == run["load"]["sent"] > 0
    assert len(run["idle"]["cpu_percent_per_process"]) == 2
    assert sum(run["connections_per_process"]) == 10


def test_counting_server_sums_the_counts_of_all_its_processes(tmp_path):
    with env.edge_database("sqlite", tmp_path) as db_url:
        server = env.CountingServer(db_url, tmp_path, workers=2).start()
        held: list[requests.Session] = []
        try:
            workers, port = psutil.Process(server.pid).children(), server.port

            def served_by(proc) -> int:
                return sum(1 for c in proc.net_connections("tcp")
                           if c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)

            # New connections (kept open) until both processes have answered some requests.
            while len(held) < 200 and not all(served_by(w) for w in workers):
                session = requests.Session()
                assert session.get(f"{server.url}/bench/counted", timeout=10).status_code == 404
                held.append(session)
            assert all(served_by(w) for w in workers), "the kernel gave one process everything"
            wait_for(lambda: server.stats().get("/bench/counted", {}).get("requests")
                     == len(held), timeout=10, message=f"{len(held)} requests counted")
        finally:
            for session in held:
                session.close()
            server.stop()


def test_dbload_quick_counts_the_statements_of_each_task(out):
    assert cli.main(["dbload", "--quick", "--dbs", "sqlite", "--out", str(out)]) == 0
    row = _results(out, "dbload")["databases"]["sqlite"]
    for part in ("sequential_per_task", "batch_per_task"):
        per_task = row[part]
        # A task is at least stored (INSERT) and removed (DELETE) in committed transactions
        # reached by HTTP requests; statements are counted one by one.
        assert per_task["statements_INSERT"] >= 1 and per_task["statements_DELETE"] >= 1, part
        assert per_task["statements"] > per_task["commits"] >= 1, part
        assert per_task["requests"] >= 1 and per_task["server_cpu_ms"] > 0, part
    assert row["idle_per_s"]["commits"] > 0  # housekeeping runs while the worker idles
    assert row["rss_mb"]["api_server"] > 0 and row["rss_mb"]["worker"] > 0


def test_report_from_quick_results(out, tmp_path, monkeypatch):
    monkeypatch.setattr(report, "SUFFIX", "-quick")
    path = report.write(out, docs=tmp_path)
    text = path.read_text()
    assert "## Where we stand" in text and "edge-sqlite" in text
    assert (tmp_path / "benchmarks" / "broker-latency.png").stat().st_size > 1000
