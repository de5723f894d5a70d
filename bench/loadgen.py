"""Load generator of the scale benchmark: N simulated edge workers in one gevent process.

    python -m bench.loadgen --url URL --token-file F --workers N --server-pid PID ...

Each simulated worker speaks the wire protocol as a Celery edge worker does, with a
connection of its own: a heartbeat every ``--heartbeat`` seconds and one long-poll after
another on the queue ``scale`` (acking what it gets). A publisher sends tasks at a
steady rate; the dispatch latency of a task is publish start → the consume answer that
carries it. Prints one JSON document: idle and loaded phases, server CPU/RSS and request
counts (from ``bench.server``'s counters), and this process's own CPU.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey-patching, as gevent requires
import json  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402

import gevent  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402

from bench.env import Usage, percentile  # noqa: E402
from edge_kombu.transport.client import EdgeClient  # noqa: E402

QUEUE = "scale"
#: What a real worker's heartbeat carries (edge_kombu.worker.sysinfo), in the same shape.
SYSINFO = {"cpu_percent": 3.0, "memory_percent": 41.5, "memory_used_bytes": 3_500_000_000,
           "disk_free_bytes": 120_000_000_000, "load_avg": [0.3, 0.2, 0.1]}
VERSIONS = {"edge_kombu": "x", "celery": "5.6.3", "kombu": "5.7.0", "python": "3.11.7"}


class Fleet:
    def __init__(self, args) -> None:
        self.args = args
        self.stopped = False
        self.polling: set[int] = set()
        self.received: dict[str, float] = {}
        self.errors: list[str] = []

    def client(self) -> EdgeClient:
        return EdgeClient(self.args.url, token=self.args.token, read_timeout=30.0, pool_size=1)

    def worker(self, index: int) -> None:
        api = self.client()
        session = uuid.uuid4().hex
        beat = {"name": f"sim{index}@scale", "instance": uuid.uuid4().hex, "state": "idle",
                "queues": [QUEUE], "slots_total": 8, "slots_used": 0, "running": [],
                "sysinfo": SYSINFO, "versions": VERSIONS, "session": session}
        wait = self.args.wait
        poll = {"session": session, "queues": [{"name": QUEUE, "no_ack": False}], "wait": wait,
                "max_slots": 8, "total_slots": 8, "max_messages": 1}
        next_beat = 0.0
        while not self.stopped:
            try:
                if time.monotonic() >= next_beat:
                    api.call("worker/heartbeat", beat)
                    next_beat = time.monotonic() + self.args.heartbeat
                self.polling.add(index)
                # A real worker's long-poll ends at its heartbeat: the two share one timer.
                poll["wait"] = max(0.0, min(wait, next_beat - time.monotonic()))
                answer = api.call("consume", poll, timeout=wait + 30)
                now = time.monotonic()
                tags = []
                for item in answer["messages"]:
                    self.received[item["message"]["body"]] = now
                    tags.append(item["message"]["properties"]["delivery_tag"])
                if tags:
                    api.call("ack", {"session": session, "delivery_tags": tags})
            except Exception as exc:  # noqa: BLE001 - count and report, keep the fleet up
                self.errors.append(f"{type(exc).__name__}: {exc}"[:200])
                gevent.sleep(1.0)

    def publish(self, rate: float, seconds: float) -> dict[str, float]:
        api = self.client()
        api.call("queue/declare", {"name": QUEUE})
        sent: dict[str, float] = {}
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            gevent.sleep(max(0.0, start + i / rate - time.monotonic()))
            tag = f"t{i}"
            sent[tag] = time.monotonic()
            api.call("publish", {"exchange": "", "routing_key": QUEUE, "message": {
                "body": tag, "content-type": "text/plain", "properties": {"delivery_mode": 2},
                "headers": {}}})
        return sent


def server_counts(url: str) -> dict:
    return requests.get(f"{url}/bench/stats", timeout=10).json()


def total_requests(counts: dict) -> int:
    return sum(c["requests"] for c in counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--rate", type=float, default=10.0, help="tasks per second")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--load-seconds", type=float, default=30.0)
    parser.add_argument("--heartbeat", type=float, default=10.0)
    parser.add_argument("--wait", type=float, default=10.0, help="long-poll wait")
    args = parser.parse_args()
    with open(args.token_file) as handle:
        args.token = handle.read().strip()
    root = psutil.Process(args.server_pid)
    server = [root, *root.children(recursive=True)]
    me = Usage([psutil.Process()])
    fleet = Fleet(args)
    started = time.monotonic()
    greenlets = []
    for i in range(args.workers):
        greenlets.append(gevent.spawn(fleet.worker, i))
        if i % 50 == 49:
            gevent.sleep(0.05)  # connect in waves, as a fleet coming up does
    deadline = time.monotonic() + 60 + args.workers * 0.1
    while len(fleet.polling) < args.workers and time.monotonic() < deadline:
        gevent.sleep(0.2)
    ramp = round(time.monotonic() - started, 1)
    gevent.sleep(min(args.heartbeat, args.idle_seconds))  # the start-up burst passes

    out = {"workers": args.workers, "polling": len(fleet.polling), "ramp_s": ramp,
           "rate": args.rate}
    counts0, usage, me_idle = server_counts(args.url), Usage(server), Usage([psutil.Process()])
    gevent.sleep(args.idle_seconds)
    counts1 = server_counts(args.url)
    out["idle"] = {
        "seconds": args.idle_seconds,
        "requests_per_s": round((total_requests(counts1) - total_requests(counts0))
                                / args.idle_seconds, 1),
        "server_cpu_percent": usage.cpu_percent(), "server_rss_mb": usage.rss_mb(),
        "loadgen_cpu_percent": me_idle.cpu_percent(),
    }
    usage, me_load = Usage(server), Usage([psutil.Process()])
    sent = fleet.publish(args.rate, args.load_seconds)
    out_cpu, out_rss, gen_cpu = usage.cpu_percent(), usage.rss_mb(), me_load.cpu_percent()
    drain = time.monotonic() + 15
    while len(set(sent) & set(fleet.received)) < len(sent) and time.monotonic() < drain:
        gevent.sleep(0.1)
    latencies = [fleet.received[t] - s for t, s in sent.items() if t in fleet.received]
    out["load"] = {
        "seconds": args.load_seconds, "sent": len(sent), "received": len(latencies),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        "server_cpu_percent": out_cpu, "server_rss_mb": out_rss, "loadgen_cpu_percent": gen_cpu,
    }
    out["errors"] = len(fleet.errors)
    out["first_errors"] = sorted(set(fleet.errors))[:5]
    out["loadgen_cpu_percent_overall"] = me.cpu_percent()
    fleet.stopped = True
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
