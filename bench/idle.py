"""Cost at idle: what one idle edge worker (``celery -A edge_kombu worker``) costs the
API server, counted on the server side (requests and bytes per route, headers included)."""

from __future__ import annotations

import time

from bench import env
from tests.helpers import BIN, wait_for


def run(*, quick: bool, seconds: float | None = None) -> dict:
    seconds = seconds or (8.0 if quick else 60.0)
    tmp = env.tmpdir("idle")
    with env.edge_database("sqlite", tmp) as db_url:
        token = env.create_token(db_url)
        server = env.CountingServer(db_url, tmp).start()
        worker = None
        try:
            worker = env.start(
                [str(BIN / "celery"), "-A", "edge_kombu", "worker", "-Q", "default", "-c", "1",
                 "-n", "idle@bench", "-l", "info"],
                tmp / "worker.log",
                env={"AIRFLOW__EDGE__API_URL": server.url, "EDGE_KOMBU_TOKEN": token,
                     "EDGE_KOMBU_RUN_DIR": str(tmp)},
            )
            wait_for(lambda: " ready." in worker.log(), timeout=60, message="worker ready")
            time.sleep(3.0)  # start-up traffic (declarations, first heartbeats) is not idle
            before = server.stats()
            usage = env.Usage(server.processes())
            time.sleep(seconds)
            after = server.stats()
            cpu = usage.cpu_percent()
        finally:
            if worker is not None:
                worker.stop()
            server.stop()
    routes = {}
    for path, count in after.items():
        was = before.get(path, {"requests": 0, "bytes_in": 0, "bytes_out": 0})
        delta = {k: count[k] - was[k] for k in count}
        if delta["requests"]:
            routes[path.rsplit("/api/v1/", 1)[-1]] = {
                "requests_per_s": round(delta["requests"] / seconds, 3),
                "bytes_per_s": round((delta["bytes_in"] + delta["bytes_out"]) / seconds, 1),
            }
    total = {
        "requests_per_s": round(sum(r["requests_per_s"] for r in routes.values()), 3),
        "bytes_per_s": round(sum(r["bytes_per_s"] for r in routes.values()), 1),
        "server_cpu_percent": cpu,
    }
    print("idle worker:", total, routes, flush=True)
    return {"seconds": seconds, "total": total, "routes": routes}
