"""Before/after probes for server-side changes: the edge API's CPU per task and when idle.

    PYTHONPATH=<tree> python -m bench.levers dispatch sqlite|postgres
    PYTHONPATH=<tree> python -m bench.levers idle [N]

Run it alternately on two trees (``git worktree add``) on a shared machine: CPU time per
task moves less with the machine's load than latency and tasks/s do.

dispatch
    One ``edge-kombu api`` and the workloads of :mod:`bench.brokers` (one worker, 300 tasks
    sent one at a time; then 2,000 queued tasks for 1 and for 4 workers), with the API
    server's CPU (all its processes) per task. The latency figure includes the server's
    idle work over the run (reaper, polls), which grows with the run's length.
idle
    One counting API server on SQLite and N (default 500) simulated workers of
    :mod:`bench.loadgen` (a heartbeat and a 10 s long-poll each, every 10 s): the server's
    CPU over 30 idle seconds, then dispatch latency at 20 tasks/s for 15 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil

from bench import brokers, env
from tests.helpers import BIN, ROOT, APIServer


def dispatch(db: str) -> dict:
    tmp = env.tmpdir("levers")
    out: dict = {"db": db}
    with env.edge_database(db, tmp) as db_url:
        token = env.create_token(db_url)
        server = APIServer(db_url, tmp)
        server.start()
        try:
            url = server.url.replace("http://", f"edge+http://:{token}@")
            root = psutil.Process(server.pid)
            processes = [root, *root.children(recursive=True)]

            def cpu() -> float:
                return sum(sum(p.cpu_times()[:2]) for p in processes)

            start = cpu()
            out["latency"] = brokers.latency(url, tmp, 300, db)
            out["latency"]["server_cpu_ms_per_task"] = round((cpu() - start) * 1000 / 305, 2)
            for n in (1, 4):
                start = cpu()
                row = brokers.throughput(url, tmp, 2000, n, db)
                row["server_cpu_ms_per_task"] = round((cpu() - start) * 1000 / 2000, 2)
                out[f"throughput_{n}"] = row
        finally:
            server.stop()
    return out


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


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "dispatch" and len(sys.argv) == 3:
        print(json.dumps(dispatch(sys.argv[2])))
    elif mode == "idle":
        print(json.dumps(idle(int(sys.argv[2]) if len(sys.argv) > 2 else 500)))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
