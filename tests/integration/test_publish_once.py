"""A publish repeated by its sender is one message (fault suite, item 5), with a real API
server and real Celery workers counting executions per task id:

* the caller sends the same task twice (same id and retry count): one execution;
* a task calling ``retry()`` once: two executions, as it must;
* the server stores a publish but the client loses the answer (a TCP proxy closes the
  connection when the answer comes): the client's resend, under its per-publish id, is
  not stored again.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections import Counter

import pytest
from kombu import Connection, Exchange, Producer, Queue
from sqlalchemy import func, select

from edge_kombu.server import models
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(180)

RECORD = "tests.celery_app.record_run"


def runs(path) -> Counter:
    """Executions per task id, as the task recorded them."""
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split()[0] for line in lines)


def stored(sql, queue: str | None = None) -> int:
    stmt = select(func.count()).select_from(models.message)
    if queue is not None:
        stmt = stmt.where(models.message.c.queue == queue)
    with sql.connect() as conn:
        return conn.execute(stmt).scalar_one()


def report(published: int, completed: int, counts: Counter, expected_runs: int = 1) -> tuple:
    lost = published - len(counts)
    twice = sum(1 for n in counts.values() if n > expected_runs)
    print(f"{published} published, {completed} completed, {lost} lost, {twice} run twice")
    return lost, twice


def test_the_same_task_sent_twice_runs_once(broker_url, worker_factory, celery_client,
                                            tmp_path, sql):
    worker_factory(broker_url, name="once", concurrency=4)
    out = tmp_path / "runs"
    ids = [f"dup-{i}-{uuid.uuid4().hex[:8]}" for i in range(40)]
    # Half are sent again at once (a resend racing the first); half again after they ran
    # (Airflow's executor resending after its own timeout, when the first had got through).
    results = []
    for task_id in ids[:20]:
        for _ in range(2):
            results.append(celery_client.send_task(RECORD, args=(str(out),), task_id=task_id))
    for task_id in ids[20:]:
        results.append(celery_client.send_task(RECORD, args=(str(out),), task_id=task_id))
    for result in results:
        result.get(timeout=60)
    for task_id in ids[20:]:
        celery_client.send_task(RECORD, args=(str(out),), task_id=task_id)
    # Every message stored has run and been acked: a duplicate stored would have run too.
    wait_for(lambda: stored(sql) == 0, timeout=60, message="all messages settled")
    counts = runs(out)
    lost, twice = report(len(ids), len(counts), counts)
    assert (lost, twice) == (0, 0), counts


def test_a_retry_runs_again(broker_url, worker_factory, celery_client, tmp_path, sql):
    worker_factory(broker_url, name="retrier", concurrency=2)
    out = tmp_path / "runs"
    ids = [f"retry-{i}-{uuid.uuid4().hex[:8]}" for i in range(10)]
    results = [celery_client.send_task(RECORD, args=(str(out), 1), task_id=task_id)
               for task_id in ids]
    assert [r.get(timeout=60) for r in results] == [1] * len(ids)
    wait_for(lambda: stored(sql) == 0, timeout=60, message="all messages settled")
    counts = runs(out)
    lost, twice = report(len(ids), len(counts), counts, expected_runs=2)
    assert (lost, twice) == (0, 0)
    assert set(counts.values()) == {2}, "retry() is a new message: each task ran twice"
    tries = sorted(out.read_text().splitlines())
    assert tries == sorted(f"{task_id} {n}" for task_id in ids for n in (0, 1))


class AnswerDropper:
    """A TCP proxy to the API that forwards every request, but instead of passing on the
    next ``budget`` answers to a publish it closes the client's connection."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.budget = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            state = {"publish": False}
            threading.Thread(target=self._requests, args=(client, server, state),
                             daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client, state),
                             daemon=True).start()

    def _requests(self, client, server, state) -> None:
        try:
            while data := client.recv(65536):
                if data.startswith(b"POST "):
                    state["publish"] = b"/api/v1/publish " in data.split(b"\r\n", 1)[0]
                server.sendall(data)
        except OSError:
            pass
        self._close(client, server)

    def _answers(self, server, client, state) -> None:
        try:
            while data := server.recv(65536):
                if state["publish"]:
                    with self._lock:
                        drop = self.budget > 0
                        if drop:
                            self.budget -= 1
                            self.dropped += 1
                    if drop:  # the server has stored it; the client never hears so
                        break
                client.sendall(data)
        except OSError:
            pass
        self._close(client, server)

    @staticmethod
    def _close(*socks) -> None:
        for sock in socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()


@pytest.mark.parametrize("window, deduplicated", [("300", True), ("0", False)],
                         ids=["deduplicated", "window-off-shows-the-resend"])
def test_a_resend_after_a_lost_answer_is_stored_once(api_factory, token, sql, window,
                                                     deduplicated):
    """Plain persistent messages (no task id), so only the per-publish id can tell the
    resend; with the window off the resend is stored again, which shows it happened."""
    api = api_factory(env={"EDGE_KOMBU_PUBLISH_DEDUP_WINDOW": window})
    proxy = AnswerDropper(api.port)
    queue = Queue(f"resend-{uuid.uuid4().hex[:8]}", Exchange("resend", "direct"),
                  routing_key="r")
    n = 10
    try:
        with Connection(f"edge+http://:{token}@127.0.0.1:{proxy.port}") as conn:
            producer = Producer(conn)
            producer.publish({"n": -1}, exchange=queue.exchange, routing_key="r",
                             declare=[queue], retry=True)
            for i in range(n):
                # Two lost answers: the client's own resend fails too, so kombu's retry
                # (a new connection) sends it a third time, under the same id.
                proxy.budget = 2 if i % 2 else 1
                producer.publish({"n": i}, exchange=queue.exchange, routing_key="r",
                                 retry=True, retry_policy={"max_retries": 3,
                                                           "interval_start": 0})
                assert proxy.budget == 0, "the answer was dropped as planned"
    finally:
        proxy.close()
    assert proxy.dropped == n + n // 2
    published = stored(sql, queue.name) - 1
    print(f"{n} published, {proxy.dropped} answers lost, {published} stored")
    # Without the window every attempt is stored: the resends were real.
    assert published == (n if deduplicated else n + proxy.dropped)
    with sql.connect() as conn:  # the id travels beside the message, not in it
        payloads = conn.execute(select(models.message.c.payload)).scalars().all()
    assert not [p for p in payloads if "publish_id" in p]
