"""SlotPool in a real worker: slot accounting, and isolation from crashing tasks."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.timeout(240)

POOL = "edge_kombu.worker.pool:SlotPool"
#: The same admission on threads, for hosts without fork (Windows).
THREAD_POOL = "edge_kombu.worker.pool:ThreadSlotPool"


def max_overlap(records: list[dict]) -> int:
    """Largest sum of slots of tasks running at the same instant."""
    events = sorted([(r["start"], r["slots"]) for r in records]
                    + [(r["end"], -r["slots"]) for r in records])
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize("pool", [POOL, THREAD_POOL])
def test_slots_never_exceed_concurrency(pool, broker_url, worker_factory, celery_client,
                                        tmp_path):
    worker = worker_factory(broker_url, pool=pool, concurrency=3)
    out = tmp_path / "runs.jsonl"
    sizes = [1, 2, 3, 1, 1, 2, 1, 3, 2, 1, 1, 1]
    results = [
        celery_client.send_task("tests.celery_app.weighted", args=(str(out), f"t{i}", 0.6),
                                headers={"pool_slots": slots})
        for i, slots in enumerate(sizes)
    ]
    assert [r.get(timeout=60) for r in results] == [f"t{i}" for i in range(len(sizes))]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["slots"] for r in records) == sorted(sizes)
    assert max_overlap(records) <= 3
    stats = celery_client.control.inspect(timeout=5).stats()[worker.hostname]["pool"]
    assert stats["implementation"] == pool
    assert stats["slots"] == {"total": 3, "used": 0, "free": 3, "waiting": 0}
    busy = sum((r["end"] - r["start"]) * r["slots"] for r in records)
    span = max(r["end"] for r in records) - min(r["start"] for r in records)
    assert busy / (3 * span) >= 0.8, f"slot utilisation {busy / (3 * span):.0%}"


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


def test_big_task_is_not_starved_by_a_stream_of_small_ones(api_factory, token, worker_factory,
                                                          celery_client, tmp_path):
    """A 3-slot task behind a steady stream of 1-slot tasks on a 3-slot worker starts within
    starvation guard + one small task's run time (+ dispatch), the documented bound."""
    guard, small = 1.0, 0.5
    api = api_factory(env={"EDGE_KOMBU_STARVATION_GUARD": str(guard)})
    url = api.url.replace("http://", f"edge+http://:{token}@")
    celery_client.conf.broker_url = url
    worker_factory(url, pool=POOL, concurrency=3)
    out = tmp_path / "runs.jsonl"

    def send(label: str, slots: int, seconds: float):
        return celery_client.send_task("tests.celery_app.weighted",
                                       args=(str(out), label, seconds),
                                       headers={"pool_slots": slots})

    stream = [send(f"s{i}", 1, small) for i in range(6)]
    big_sent = time.time()
    big = send("big", 3, 0.1)
    stream += [send(f"s{i}", 1, small) for i in range(6, 30)]  # keeps the worker busy
    assert big.get(timeout=60) == "big"
    for result in stream:
        result.get(timeout=120)
    records = {r["label"]: r for r in map(json.loads, out.read_text().splitlines())}
    waited = records["big"]["start"] - big_sent
    # Before the big task: the six small ones sent first (two rounds of three), then the
    # guard, then at most one small task still running.
    bound = 2 * small + guard + small + 1.0
    assert waited <= bound, f"3-slot task waited {waited:.2f}s (bound {bound:.2f}s)"
    later = [r for label, r in records.items() if label.startswith("s") and int(label[1:]) >= 6]
    assert any(r["start"] > records["big"]["end"] for r in later), "the stream went on after it"
    assert max_overlap(list(records.values())) <= 3
