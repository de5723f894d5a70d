"""Scale: one API server process (gunicorn, gevent, SQLite) against N simulated edge workers
(:mod:`bench.loadgen`), idle and under a steady task rate."""

from __future__ import annotations

import json
import subprocess

from bench import env
from tests.helpers import BIN, ROOT

COUNTS = (100, 300, 1000)
#: After the steady runs: the largest fleet at a higher task rate, to show the limit.
STRESS_RATE = 60.0


def one(n: int, *, quick: bool, rate: float, db: str) -> dict:
    tmp = env.tmpdir(f"scale{n}")
    with env.edge_database(db, tmp) as db_url:
        token_file = tmp / "token"
        token_file.write_text(env.create_token(db_url))
        # The whole simulated fleet connects from one address: no cap per address here.
        server = env.CountingServer(db_url, tmp,
                                    env={"EDGE_KOMBU_MAX_CONNECTIONS_PER_ADDRESS": "0"}).start()
        args = [str(BIN / "python"), "-m", "bench.loadgen", "--url", server.url,
                "--token-file", str(token_file), "--workers", str(n),
                "--server-pid", str(server.pid), "--rate", str(rate)]
        if quick:
            args += ["--idle-seconds", "2", "--load-seconds", "3", "--heartbeat", "2",
                     "--wait", "2"]
        env.record(args)
        try:
            done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT,
                                  timeout=180 + n * 0.5, env=dict(__import__("os").environ,
                                                                  PYTHONPATH=str(ROOT)))
        finally:
            server.stop()
        if done.returncode != 0:
            raise AssertionError(f"load generator failed:\n{done.stdout}\n{done.stderr[-3000:]}"
                                 f"\nserver log:\n{server.log()[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
    result["db"] = db
    print(f"scale n={n}:", result, flush=True)
    return result


def run(*, quick: bool, counts: list[int] | None = None, rate: float | None = None,
        db: str = "sqlite") -> dict:
    counts = counts or ([10] if quick else list(COUNTS))
    rate = rate or (5.0 if quick else 20.0)
    runs = [one(n, quick=quick, rate=rate, db=db) for n in counts]
    if not quick:
        runs.append(one(max(counts), quick=False, rate=STRESS_RATE, db=db))
    return {"rate_per_s": rate, "runs": runs}
