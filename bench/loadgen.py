"""Load generator of the scale benchmark: N simulated edge workers in one gevent process.

    python -m bench.loadgen --url URL --token-file F --workers N --server-pid PID ...

Each simulated worker speaks the wire protocol as a Celery edge worker does, with a
connection of its own: a heartbeat every ``--heartbeat`` seconds and one long-poll after
another on the queue ``scale`` (acking what it gets). A publisher sends tasks at a
steady rate (open loop, over a few connections); the dispatch latency of a task is the
time it was due to be published → the consume answer that carries it. Prints one JSON
document: idle and loaded phases, server CPU/RSS (in all and per process) and request
counts (from ``bench.server``'s counters), and this process's own CPU.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey-patching, as gevent requires
import contextlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import gevent.queue  # noqa: E402
import psutil  # noqa: E402
import requests  # noqa: E402

from bench.env import Usage, percentile  # noqa: E402
from edge_kombu.transport.client import EdgeClient  # noqa: E402

QUEUE = "scale"
#: Connections the publisher spreads its tasks over (a few producers, as a scheduler's
#: pool of connections or several apps are).
PUBLISHERS = 4
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
        #: Round trips of heartbeats (seconds) since the phase began: how late a worker's
        #: liveness reaches the server (30 s late and the server takes it for dead).
        self.beats: list[float] = []
        self.due = 0  # tasks the publisher was to send

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
                    due = time.monotonic()
                    api.call("worker/heartbeat", beat)
                    next_beat = time.monotonic() + self.args.heartbeat
                    self.beats.append(next_beat - self.args.heartbeat - due)
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
                if type(exc).__name__ == "SessionClosed":
                    # Expired while the server was too slow: a worker opens a new one.
                    session = uuid.uuid4().hex
                    beat["session"] = poll["session"] = session
                    next_beat = 0.0
                gevent.sleep(1.0)

    def publish(self, rate: float, seconds: float) -> dict[str, float]:
        """Open loop: task i is published at start + i/rate whatever earlier publishes still
        take, over :data:`PUBLISHERS` connections (a slow answer delays no later publish
        unless all are busy). A task's time is when it was due, so a publisher that falls
        behind shows in the latency instead of lowering the rate."""
        clients = gevent.queue.Queue()
        for _ in range(PUBLISHERS):
            clients.put(self.client())
        first = clients.get()
        first.call("queue/declare", {"name": QUEUE})
        clients.put(first)
        due: dict[str, float] = {}
        published: set[str] = set()
        start = time.monotonic()

        def one(tag: str) -> None:
            api = clients.get()
            try:
                api.call("publish", {"exchange": "", "routing_key": QUEUE, "message": {
                    "body": tag, "content-type": "text/plain",
                    "properties": {"delivery_mode": 2}, "headers": {}}})
                published.add(tag)
            except Exception as exc:  # noqa: BLE001 - counted; the task is never received
                self.errors.append(f"publish {type(exc).__name__}: {exc}"[:200])
            finally:
                clients.put(api)

        group = gevent.pool.Group()
        for i in range(int(rate * seconds)):
            due[f"t{i}"] = start + i / rate
            gevent.sleep(max(0.0, due[f"t{i}"] - time.monotonic()))
            group.spawn(one, f"t{i}")
        # Bounded: what a saturated server has not taken 30 s after the last was due is
        # left out (counted as due but not sent).
        group.join(timeout=max(0.0, start + seconds + 30 - time.monotonic()))
        group.kill(block=True, timeout=5)
        self.due = len(due)
        return {tag: when for tag, when in due.items() if tag in published}


def raise_open_files_limit(workers: int) -> None:
    """One connection per simulated worker, plus spares: the soft limit is often 1,024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = workers + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise SystemExit(f"{workers} connections need {wanted} open files; the hard "
                             f"limit is {hard} (ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def connections_of(processes: list[psutil.Process], port: int) -> list[int]:
    """Clients' connections each API process holds (how the kernel spread them)."""
    counts = []
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            counts.append(sum(1 for c in proc.net_connections("tcp") if c.laddr.port == port
                              and c.status == psutil.CONN_ESTABLISHED))
    return counts


class PerProcess:
    """CPU of each API server process (the gunicorn workers) between two samples, and how
    long each was runnable but waiting for a CPU (Linux's schedstat): on a machine shared
    with other jobs, a server waiting for a CPU answers late for reasons not its own."""

    def __init__(self, processes: list[psutil.Process]) -> None:
        self.pids = [p.pid for p in processes]
        self.each = [Usage([p]) for p in processes]
        self.waited0, self.t0 = self._waited(), time.monotonic()

    def _waited(self) -> list[float]:
        waited = []
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/schedstat") as handle:
                    waited.append(int(handle.read().split()[1]) / 1e9)
            except (OSError, IndexError, ValueError):
                waited.append(float("nan"))
        return waited

    def cpu_percent(self) -> list[float]:
        return [u.cpu_percent() for u in self.each]

    def cpu_wait_percent(self) -> list[float]:
        elapsed = time.monotonic() - self.t0
        return [round(100 * (b - a) / elapsed, 1)
                for a, b in zip(self.waited0, self._waited(), strict=True)]


def sql_counts(url: str) -> dict:
    """The server's database work so far (all processes): statements, commits, ..."""
    return _read(f"{url}/bench/sql")


def sql_delta(before: dict, after: dict, per: float) -> dict:
    keys = ("statements", "statements_SELECT", "statements_UPDATE", "commits")
    return {k: round((after.get(k, 0) - before.get(k, 0)) / per, 1)
            if per and before and after else None for k in keys}


def server_counts(url: str) -> dict:
    return _read(f"{url}/bench/stats")


def _read(url: str) -> dict:
    """A counter of the server, or {} if it does not answer within a minute (a saturated
    server: the run still reports what the load generator saw)."""
    try:
        return requests.get(url, timeout=60).json()
    except requests.RequestException as exc:
        progress(f"{url}: {type(exc).__name__}")
        return {}


def total_requests(counts: dict) -> int:
    return sum(c["requests"] for c in counts.values()) if counts else float("nan")


def progress(what: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {what}", file=sys.stderr, flush=True)


def beat_summary(beats: list[float]) -> dict:
    return {"heartbeat_p50_ms": round(percentile(beats, 50) * 1000, 1) if beats else None,
            "heartbeat_p99_ms": round(percentile(beats, 99) * 1000, 1) if beats else None}


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
    raise_open_files_limit(args.workers)
    root = psutil.Process(args.server_pid)
    workers = root.children(recursive=True)  # gunicorn's workers: the processes that serve
    server = [root, *workers]
    me = Usage([psutil.Process()])
    fleet = Fleet(args)
    started = time.monotonic()
    greenlets = []
    for i in range(args.workers):
        greenlets.append(gevent.spawn(fleet.worker, i))
        if i % 50 == 49:
            gevent.sleep(0.05)  # connect in waves, as a fleet coming up does
    deadline = time.monotonic() + 60 + args.workers * 0.02
    while len(fleet.polling) < args.workers and time.monotonic() < deadline:
        gevent.sleep(0.2)
    ramp = round(time.monotonic() - started, 1)
    progress(f"{len(fleet.polling)} of {args.workers} polling after {ramp} s")
    gevent.sleep(min(args.heartbeat, args.idle_seconds))  # the start-up burst passes
    progress("idle phase")

    out = {"workers": args.workers, "polling": len(fleet.polling), "ramp_s": ramp,
           "rate": args.rate}
    out["connections_per_process"] = connections_of(workers, urlsplit(args.url).port)
    counts0, usage, me_idle = server_counts(args.url), Usage(server), Usage([psutil.Process()])
    sql0 = sql_counts(args.url)
    each = PerProcess(workers)
    fleet.beats = []
    gevent.sleep(args.idle_seconds)
    counts1, sql1 = server_counts(args.url), sql_counts(args.url)
    out["idle"] = {
        "seconds": args.idle_seconds,
        "requests_per_s": round((total_requests(counts1) - total_requests(counts0))
                                / args.idle_seconds, 1),
        "server_cpu_percent": usage.cpu_percent(), "server_rss_mb": usage.rss_mb(),
        "cpu_percent_per_process": each.cpu_percent(),
        "cpu_wait_percent_per_process": each.cpu_wait_percent(),
        "loadgen_cpu_percent": me_idle.cpu_percent(), "load_average": list(os.getloadavg()),
        **beat_summary(fleet.beats),
        "sql_per_s": sql_delta(sql0, sql1, args.idle_seconds),
    }
    progress(f"idle: {out['idle']}; load phase")
    usage, me_load, each = Usage(server), Usage([psutil.Process()]), PerProcess(workers)
    fleet.beats = []
    began, sql0 = time.monotonic(), sql_counts(args.url)
    sent = fleet.publish(args.rate, args.load_seconds)
    publishing = time.monotonic() - began  # beyond --load-seconds: publishes were slow
    out_cpu, out_rss, gen_cpu = usage.cpu_percent(), usage.rss_mb(), me_load.cpu_percent()
    out_each, out_wait = each.cpu_percent(), each.cpu_wait_percent()
    progress(f"published {len(sent)} in {publishing:.1f} s; draining")
    drain = time.monotonic() + 15
    while len(set(sent) & set(fleet.received)) < len(sent) and time.monotonic() < drain:
        gevent.sleep(0.1)
    latencies = [fleet.received[t] - s for t, s in sent.items() if t in fleet.received]
    # Per task: all the database work of the phase (the idle polling's included; subtract
    # the idle phase's sql_per_s × the phase's length to see the tasks' own).
    sql_per_task = sql_delta(sql0, sql_counts(args.url), len(sent))
    out["load"] = {
        "seconds": args.load_seconds, "publishing_s": round(publishing, 1), "due": fleet.due,
        "sent": len(sent),
        "received": len(latencies),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 99) * 1000, 1) if latencies else None,
        "server_cpu_percent": out_cpu, "server_rss_mb": out_rss, "loadgen_cpu_percent": gen_cpu,
        "cpu_percent_per_process": out_each, "cpu_wait_percent_per_process": out_wait,
        "load_average": list(os.getloadavg()),
        **beat_summary(fleet.beats),
        "sql_per_task": sql_per_task, "phase_s": round(time.monotonic() - began, 1),
    }
    out["errors"] = len(fleet.errors)
    out["first_errors"] = sorted(set(fleet.errors))[:5]
    out["loadgen_cpu_percent_overall"] = me.cpu_percent()
    fleet.stopped = True
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
