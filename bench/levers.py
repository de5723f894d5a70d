"""Before/after probes for server-side changes: the edge API's CPU per task and when idle.

    PYTHONPATH=<tree> python -m bench.levers dispatch sqlite|postgres
    PYTHONPATH=<tree> python -m bench.levers latency sqlite|postgres GAP [N]
    PYTHONPATH=<tree> python -m bench.levers idle [N]
    PYTHONPATH=<tree> python -m bench.levers checkout postgres|mysql [N]
    PYTHONPATH=<tree> python -m bench.levers profile sqlite|postgres OUT [N]
    PYTHONPATH=<tree> python -m bench.levers requests [N]

Run it alternately on two trees (``git worktree add``) on a shared machine: CPU time per
task moves less with the machine's load than latency and tasks/s do.

dispatch
    One ``edge-kombu api`` and the workloads of :mod:`bench.brokers` (one worker, 300 tasks
    sent one at a time; then 2,000 queued tasks for 1 and for 4 workers), with the API
    server's CPU (all its processes) per task. The latency figure includes the server's
    idle work over the run (reaper, polls), which grows with the run's length.
latency
    One worker, N tasks (default 150) sent one at a time, each GAP seconds after the
    previous one started (GAP 0.03: the worker's long-poll waits when the publish comes):
    p50/p99 publish→start and the API server's CPU per task (its idle work included).
idle
    One counting API server on SQLite and N (default 500) simulated workers of
    :mod:`bench.loadgen` (a heartbeat and a 10 s long-poll each, every 10 s): the server's
    CPU over 30 idle seconds, then dispatch latency at 20 tasks/s for 15 s.
checkout
    The cost of checking a live connection out of the pool, in this process: N (default
    3,000) one-statement transactions through the pool, in turn on an engine with
    SQLAlchemy's ``pool_pre_ping`` (before), on the edge API's engine
    (:class:`~edge_kombu.server.sql.CheckoutProbe`) and on one with no check at all; CPU
    and wall time per transaction of each, three rounds.
profile
    The latency workload of ``dispatch`` (N tasks, default 300, sent one at a time) with
    ``py-spy record`` (200 Hz, idle samples left out) on the API server's processes: the
    folded stacks go to OUT, for ``grep``/``flamegraph.pl``.
requests
    The API server's own cost per request, without the database: N (default 5,000)
    ``GET /health`` on one keep-alive connection to an ``edge-kombu api`` on SQLite, three
    rounds; the server's CPU and the client's wall time per request.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import psutil

from bench import brokers, env
from tests.helpers import BIN, ROOT, APIServer


@contextlib.contextmanager
def _edge_api(db: str, tmp) -> Iterator[tuple[str, Callable[[], float]]]:
    """An ``edge-kombu api`` on a fresh ``db``: its broker URL and its CPU seconds so far."""
    with env.edge_database(db, tmp) as db_url:
        token = env.create_token(db_url)
        server = APIServer(db_url, tmp)
        server.start()
        try:
            root = psutil.Process(server.pid)
            processes = [root, *root.children(recursive=True)]

            def cpu() -> float:
                return sum(sum(p.cpu_times()[:2]) for p in processes)

            yield server.url.replace("http://", f"edge+http://:{token}@"), cpu
        finally:
            server.stop()


def dispatch(db: str) -> dict:
    tmp = env.tmpdir("levers")
    out: dict = {"db": db}
    with _edge_api(db, tmp) as (url, cpu):
        start = cpu()
        out["latency"] = brokers.latency(url, tmp, 300, db)
        out["latency"]["server_cpu_ms_per_task"] = round((cpu() - start) * 1000 / 305, 2)
        for n in (1, 4):
            start = cpu()
            row = brokers.throughput(url, tmp, 2000, n, db)
            row["server_cpu_ms_per_task"] = round((cpu() - start) * 1000 / 2000, 2)
            out[f"throughput_{n}"] = row
    return out


def latency(db: str, gap: float, n: int = 150) -> dict:
    tmp = env.tmpdir("levers-latency")
    with _edge_api(db, tmp) as (url, cpu), \
            brokers._one_worker(url, tmp, f"{db}-gap") as (client, queue, marks):
        start = cpu()
        seconds = []
        for i in range(n):
            sent = time.time()
            client.send_task("bench.app.mark", args=[str(i)], queue=queue)
            seconds.append(marks.wait(str(i), timeout=30) - sent)
            time.sleep(gap)
        marks.wait(str(n - 1), timeout=30)
        used = cpu() - start
    return {"db": db, "gap": gap, **env.summary_ms(seconds[5:]),
            "server_cpu_ms_per_task": round(used * 1000 / n, 2)}


def idle(n: int) -> dict:
    tmp = env.tmpdir(f"levers-idle{n}")
    with env.edge_database("sqlite", tmp) as db_url:
        token_file = tmp / "token"
        token_file.write_text(env.create_token(db_url))
        server = env.CountingServer(db_url, tmp,
                                    env={"EDGE_KOMBU_MAX_CONNECTIONS_PER_ADDRESS": "0"}).start()
        args = [str(BIN / "python"), "-m", "bench.loadgen", "--url", server.url,
                "--token-file", str(token_file), "--workers", str(n),
                "--server-pid", str(server.pid), "--rate", "20", "--idle-seconds", "30",
                "--load-seconds", "15"]
        env.record(args)
        try:
            done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=600,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
        finally:
            server.stop()
    if done.returncode != 0:
        raise AssertionError(f"load generator failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def checkout(db: str, n: int = 3000) -> dict:
    import time

    from sqlalchemy import create_engine, text

    from edge_kombu.server.sql import create_db_engine

    url = env.POSTGRES_URL if db == "postgres" else os.environ.get(
        "BENCH_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
    engines = {"pre_ping": create_engine(url, pool_size=1, pool_pre_ping=True),
               "probe": create_db_engine(url, pool_size=1),
               "none": create_engine(url, pool_size=1)}
    out: dict = {name: [] for name in engines}
    try:
        for _ in range(3):
            for name, engine in engines.items():
                query = text("SELECT 1")
                with engine.begin() as conn:  # warm: the connection is open and pooled
                    conn.execute(query)
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(n):
                    with engine.begin() as conn:
                        conn.execute(query)
                cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                out[name].append({"cpu_us": round(cpu * 1e6 / n, 1),
                                  "wall_us": round(wall * 1e6 / n, 1)})
    finally:
        for engine in engines.values():
            engine.dispose()
    out["load_average"] = os.getloadavg()
    return out


def profile(db: str, out: str, n: int = 300) -> dict:
    import shutil
    import signal

    tmp = env.tmpdir("levers-profile")
    with env.edge_database(db, tmp) as db_url:
        token = env.create_token(db_url)
        server = APIServer(db_url, tmp)
        server.start()
        spy = subprocess.Popen([shutil.which("py-spy") or str(BIN / "py-spy"), "record", "-r",
                                "200", "--subprocesses", "--format", "raw", "-o", out,
                                "-p", str(server.pid)], stdout=subprocess.DEVNULL)
        try:
            url = server.url.replace("http://", f"edge+http://:{token}@")
            result = brokers.latency(url, tmp, n, db)
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
            spy.wait(timeout=60)
            server.stop()
    return result


def requests(n: int = 5000) -> dict:
    import http.client
    import time
    from urllib.parse import urlsplit

    from edge_kombu.protocol import API_PATH

    tmp = env.tmpdir("levers-requests")
    out: dict = {"rounds": []}
    with env.edge_database("sqlite", tmp) as db_url:
        server = APIServer(db_url, tmp)
        server.start()
        try:
            root = psutil.Process(server.pid)
            processes = [root, *root.children(recursive=True)]
            where = urlsplit(server.url)
            conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
            for _ in range(3):
                cpu = sum(sum(p.cpu_times()[:2]) for p in processes)
                wall = time.perf_counter()
                for _ in range(n):
                    conn.request("GET", f"{API_PATH}/health")
                    conn.getresponse().read()
                wall = time.perf_counter() - wall
                cpu = sum(sum(p.cpu_times()[:2]) for p in processes) - cpu
                out["rounds"].append({"server_cpu_us": round(cpu * 1e6 / n, 1),
                                      "wall_us": round(wall * 1e6 / n, 1)})
            conn.close()
        finally:
            server.stop()
    out["load_average"] = os.getloadavg()
    return out


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "dispatch" and len(sys.argv) == 3:
        print(json.dumps(dispatch(sys.argv[2])))
    elif mode == "latency" and len(sys.argv) in (4, 5):
        print(json.dumps(latency(sys.argv[2], float(sys.argv[3]),
                                 *(int(a) for a in sys.argv[4:]))))
    elif mode == "checkout" and len(sys.argv) in (3, 4):
        print(json.dumps(checkout(sys.argv[2], *(int(a) for a in sys.argv[3:]))))
    elif mode == "profile" and len(sys.argv) in (4, 5):
        print(json.dumps(profile(sys.argv[2], sys.argv[3], *(int(a) for a in sys.argv[4:]))))
    elif mode == "requests" and len(sys.argv) in (2, 3):
        print(json.dumps(requests(*(int(a) for a in sys.argv[2:]))))
    elif mode == "idle":
        print(json.dumps(idle(int(sys.argv[2]) if len(sys.argv) > 2 else 500)))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
