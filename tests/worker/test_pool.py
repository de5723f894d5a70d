"""SlotPool in a real worker: slot accounting, and isolation from crashing tasks."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.timeout(240)

POOL = "edge_kombu.worker.pool:SlotPool"


def max_overlap(records: list[dict]) -> int:
    """Largest sum of slots of tasks running at the same instant."""
    events = sorted([(r["start"], r["slots"]) for r in records]
                    + [(r["end"], -r["slots"]) for r in records])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_slots_never_exceed_concurrency(broker_url, worker_factory, celery_client, tmp_path):
    worker_factory(broker_url, pool=POOL, concurrency=3)
    out = tmp_path / "runs.jsonl"
    sizes = [1, 2, 3, 1, 1, 2, 1, 3, 2, 1, 1, 1]
    results = [
        celery_client.send_task("tests.celery_app.weighted", args=(str(out), f"t{i}", 0.3),
                                headers={"pool_slots": slots})
        for i, slots in enumerate(sizes)
    ]
    assert [r.get(timeout=60) for r in results] == [f"t{i}" for i in range(len(sizes))]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["slots"] for r in records) == sorted(sizes)
    assert max_overlap(records) <= 3
    busy = sum((r["end"] - r["start"]) * r["slots"] for r in records)
    span = max(r["end"] for r in records) - min(r["start"] for r in records)
    assert busy / (3 * span) >= 0.6, f"slot utilisation {busy / (3 * span):.0%}"


def test_crashing_task_does_not_take_the_worker_down(broker_url, worker_factory, celery_client):
    worker = worker_factory(broker_url, pool=POOL, concurrency=2)
    crashed = celery_client.send_task("tests.celery_app.crash")
    with pytest.raises(Exception) as info:
        crashed.get(timeout=60)
    assert "WorkerLostError" in type(info.value).__name__ or "exited" in str(info.value)
    assert worker.alive()
    assert celery_client.send_task("tests.celery_app.add", args=(1, 1)).get(timeout=30) == 2
    stats = celery_client.control.inspect(timeout=5).stats()
    assert stats[worker.hostname]["pool"]["slots"]["total"] == 2
