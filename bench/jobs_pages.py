"""``python -m bench.jobs_pages [--db URL] [--rows N]``: Jobs page latency over a big history.

Fills a fresh jobs table with N rows (default 100,000; states, queues and workers spread
evenly) and times the page queries the Jobs page and ``edge-kombu jobs`` run: the newest
page, a deep page by cursor, each filter, and a text search. Prints the median of 20
runs per query in milliseconds. Target: every filtered or cursor page under 50 ms on
this machine (keyset pages over ``(column, seq)`` indexes, never a sort); the text
search scans and is reported, not targeted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from sqlalchemy import insert

from edge_kombu.server import models as m
from edge_kombu.server.db import migrate
from edge_kombu.server.jobs import JobHistory
from edge_kombu.server.sql import SQL

QUERIES = {
    "newest page": {},
    "deep page (cursor)": {"before": 10_000},
    "state=failed": {"state": "failed"},
    "queue=q7": {"queue": "q7"},
    "worker=w42": {"worker": "w42"},
    "state+queue, deep": {"state": "failed", "queue": "q4", "before": 20_000},
    "text search (scan)": {"text": "bulk-9999"},
}


def fill(sql: SQL, rows: int) -> None:
    now = sql.clock()
    batch = []
    with sql.engine.begin() as conn:
        for i in range(rows):
            batch.append({"task_id": f"bulk-{i}", "name": "bench.task", "queue": f"q{i % 10}",
                          "slots": 1, "state": ("success", "failed", "running")[i % 3],
                          "worker": f"w{i % 50}", "queued_at": now + i})
            if len(batch) == 10_000:
                conn.execute(insert(m.job), batch)
                batch = []
        if batch:
            conn.execute(insert(m.job), batch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.jobs_pages", description=__doc__)
    parser.add_argument("--db", help="an empty database (default: a temporary SQLite file)")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    url = args.db or f"sqlite:///{tempfile.mkdtemp(prefix='bench-jobs-')}/jobs.db"
    sql = SQL.from_url(url, pool_size=2)
    engine = sql.engine
    migrate(engine)
    fill(sql, args.rows)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE edge_kombu_job")
    history = JobHistory(sql)
    print(f"{engine.dialect.name}, {args.rows} jobs, 50 per page, median of 20 runs:")
    for label, filters in QUERIES.items():
        times = []
        for _ in range(20):
            started = time.perf_counter()
            page = history.page(limit=50, **filters)
            times.append((time.perf_counter() - started) * 1000)
        print(f"  {label:24s} {statistics.median(times):7.2f} ms  ({len(page['jobs'])} rows)")
    sql.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
