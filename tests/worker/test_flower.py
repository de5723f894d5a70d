"""A real Flower process over the edge broker: workers, tasks from events, queue lengths,
remote control; started both as ``celery -A edge_kombu flower`` and with ``--broker``."""

from __future__ import annotations

import pytest
import requests

from tests.helpers import BIN, Process, free_port, wait_for
from tests.worker.conftest import held_task

pytestmark = pytest.mark.timeout(240)


class Flower(Process):
    def __init__(self, tmp, env: dict, *app_args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [str(BIN / "celery"), *app_args, "flower", f"--port={self.port}",
                "--address=127.0.0.1"]
        super().__init__(args, tmp / f"flower-{self.port}.log",
                         env=dict(env, FLOWER_UNAUTHENTICATED_API="true"))

    def get(self, path: str, **params):
        if not self.alive():
            raise AssertionError(f"flower exited:\n{self.log()}")
        answer = requests.get(f"{self.url}{path}", params=params, timeout=30)
        answer.raise_for_status()
        return answer.json()


@pytest.fixture
def flowers(tmp_path):
    started = []

    def start(env: dict, *app_args: str) -> Flower:
        flower = Flower(tmp_path, env, *app_args)
        started.append(flower)
        return flower.start()

    yield start
    for flower in started:
        flower.stop()


def test_flower_sees_edge_workers_tasks_and_queue_lengths(edge_workers, env_for, api, token,
                                                          send, flowers, tmp_path):
    worker = edge_workers("fl1", concurrency=1)
    by_app = flowers(env_for(api), "-A", "edge_kombu")
    broker_url = api.url.replace("http://", f"edge+http://:{token}@")
    by_url = flowers(env_for(None), "--broker", broker_url)

    for flower in (by_app, by_url):
        workers = wait_for(lambda f=flower: worker.hostname in f.get("/api/workers", refresh=1)
                           and f.get("/api/workers"), timeout=60, message="worker in Flower")
        info = workers[worker.hostname]
        assert [q["name"] for q in info["active_queues"]] == ["remote"]

    # Flower switches task events on (every 5 s); then a finished task appears with its state.
    wait_for(lambda: "enabled by remote" in worker.log(), message="Flower enabled events")
    result = send("touch", str(tmp_path / "flower.done"))
    assert result.get(timeout=30) == "flower.done"
    for flower in (by_app, by_url):
        task = wait_for(lambda f=flower: f.get("/api/tasks").get(result.id), timeout=60,
                        message="task in Flower")
        wait_for(lambda f=flower: f.get("/api/tasks")[result.id]["state"] == "SUCCESS",
                 message="task succeeded in Flower")
        assert task["name"] == "tests.edge_tasks.touch"

    # Queue lengths through the edge API: one task running, one waiting behind it.
    held, started, release = held_task(send, tmp_path, "busy")
    wait_for(started.exists, message="held task running")
    waiting = send("touch", str(tmp_path / "behind.done"))
    for flower in (by_app, by_url):
        lengths = wait_for(lambda f=flower: f.get("/api/queues/length")["active_queues"],
                           message="queue lengths")
        [remote] = [q for q in lengths if q["name"] == "remote"]
        # (consumers: sessions polling the queue now; a worker with no free slot is not)
        assert (remote["messages"], remote["messages_ready"]) == (1, 1)
    release.touch()
    assert held.get(timeout=30) and waiting.get(timeout=30)

    # A control button: grow the pool by one slot.
    answer = requests.post(f"{by_app.url}/api/worker/pool/grow/{worker.hostname}",
                           params={"n": 1}, timeout=30)
    assert answer.status_code == 200, answer.text
    wait_for(lambda: worker.status()["slots_total"] == 2, message="pool grown to 2 slots")
