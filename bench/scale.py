"""Scale: the API server (gunicorn, gevent; ``api_workers`` processes, SQLite or PostgreSQL)
against N simulated edge workers (:mod:`bench.loadgen`), idle and under a steady task rate."""

from __future__ import annotations

import json
import os
import subprocess

from bench import env
from tests.helpers import BIN, ROOT

COUNTS = (100, 300, 1000)
#: After the steady runs: the largest fleet at a higher task rate, to show the limit.
STRESS_RATE = 60.0


def one(n: int, *, quick: bool, rate: float, db: str, api_workers: int = 1,
        load_seconds: float | None = None) -> dict:
    tmp = env.tmpdir(f"scale{n}")
    with env.edge_database(db, tmp) as db_url:
        token_file = tmp / "token"
        token_file.write_text(env.create_token(db_url))
        # The whole simulated fleet connects from one address: no cap per address here.
        server = env.CountingServer(db_url, tmp, workers=api_workers,
                                    env={"EDGE_KOMBU_MAX_CONNECTIONS_PER_ADDRESS": "0"}).start()
        args = [str(BIN / "python"), "-m", "bench.loadgen", "--url", server.url,
                "--token-file", str(token_file), "--workers", str(n),
                "--server-pid", str(server.pid), "--rate", str(rate)]
        if quick:
            args += ["--idle-seconds", "2", "--load-seconds", "3", "--heartbeat", "2",
                     "--wait", "2"]
        elif load_seconds:
            args += ["--load-seconds", str(load_seconds)]
        env.record(args)
        progress = tmp / "loadgen.log"  # its phases as they pass, and any traceback
        print(f"  (load generator's progress: {progress})", flush=True)
        try:
            with progress.open("w") as stderr:
                done = subprocess.run(args, stdout=subprocess.PIPE, stderr=stderr, text=True,
                                      cwd=ROOT, timeout=180 + n * 0.5,
                                      env=dict(os.environ, PYTHONPATH=str(ROOT)))
        finally:
            server.stop()
        if done.returncode != 0:
            raise AssertionError(f"load generator failed:\n{done.stdout}\n"
                                 f"{progress.read_text()[-3000:]}"
                                 f"\nserver log:\n{server.log()[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    result["db"] = db
    result["api_workers"] = api_workers
    # Workers whose heartbeat came over 30 s late: the server took them for dead.
    result["marked_unknown"] = server.log().count("missed its heartbeats")
    print(f"scale n={n}:", result, flush=True)
    return result


def run(*, quick: bool, counts: list[int] | None = None, rate: float | None = None,
        db: str = "sqlite", api_workers: int = 1, stress: bool | None = None,
        load_seconds: float | None = None) -> dict:
    """``stress`` (default: on in full runs): one more run of the largest fleet at
    :data:`STRESS_RATE` tasks/s."""
    counts = counts or ([10] if quick else list(COUNTS))
    rate = rate or (5.0 if quick else 20.0)
    settings = {"db": db, "api_workers": api_workers, "load_seconds": load_seconds}
    runs = [one(n, quick=quick, rate=rate, **settings) for n in counts]
    if (not quick) if stress is None else stress:
        runs.append(one(max(counts), quick=quick, rate=STRESS_RATE, **settings))
    return {"rate_per_s": rate, "db": db, "api_workers": api_workers, "runs": runs}
