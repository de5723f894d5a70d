"""The edge API as ``edge-kombu api`` serves it, plus a count of what it served.

    python -m bench.server --bind 127.0.0.1:PORT --db URL [--workers N]

A WSGI middleware counts requests and bytes (request line, headers and body each way)
per route; ``GET /bench/stats`` returns the counts as JSON and is not counted itself.
``GET /bench/sql`` returns what the server asked of its database since it started, counted
by SQLAlchemy event hooks on every engine: statements by leading keyword, commits,
rollbacks and pool checkouts (statements on raw DB-API connections are not seen).
Benchmarks only: gunicorn gevent processes, one by default as the default server runs.
With ``--workers N`` both answers are the sums over all N processes (:class:`SharedCounts`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from edge_kombu.server.config import ServerConfig
from edge_kombu.server.serve import APIServer

STATS_PATH = "/bench/stats"
SQL_PATH = "/bench/sql"


class SQLCounter:
    """Counts of the database work of this process, from SQLAlchemy's engine events."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = defaultdict(int)

    def install(self) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from sqlalchemy.pool import Pool

        event.listen(Engine, "before_cursor_execute", self._statement)
        event.listen(Engine, "commit", lambda conn: self._add("commits"))
        event.listen(Engine, "rollback", lambda conn: self._add("rollbacks"))
        event.listen(Pool, "checkout", lambda *args: self._add("checkouts"))

    def _add(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def _statement(self, conn, cursor, statement, parameters, context, executemany) -> None:
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else "?"
        with self.lock:
            self.counts["statements"] += 1
            self.counts[f"statements_{verb}"] += 1

    def snapshot(self) -> dict[str, int]:
        with self.lock:
            return dict(self.counts)


SQL_COUNTS = SQLCounter()

#: Where each process of one server leaves a snapshot of its counts (set before forking).
SHARE_ENV = "BENCH_STATS_DIR"


class SharedCounts:
    """The counts of all processes of one server, whichever process is asked.

    Each process keeps counting in memory (nothing added to a request's path) and a
    background greenlet writes its snapshot to ``DIR/<name>-<pid>.json`` (in memory, under
    /dev/shm) at most every :attr:`FLUSH` seconds, only after a change. A reader sums its
    own live counts with the other processes' files, so a sum lags by at most
    :attr:`FLUSH` seconds (none with one process); files of exited processes stay
    counted, as their requests were served.
    """

    FLUSH = 0.2

    def __init__(self, name: str, snapshot) -> None:
        self.name = name
        self.snapshot = snapshot  # () -> this process's counts, a JSON-able dict
        self.folder = Path(os.environ[SHARE_ENV]) if os.environ.get(SHARE_ENV) else None

    def start(self) -> None:
        if self.folder is not None:
            threading.Thread(target=self._flush_forever, daemon=True).start()

    def _flush_forever(self) -> None:
        mine, written = self.folder / f"{self.name}-{os.getpid()}.json", None
        while True:
            time.sleep(self.FLUSH)
            counts = self.snapshot()
            if counts != written:
                spare = mine.with_suffix(".tmp")
                spare.write_text(json.dumps(counts))
                spare.replace(mine)  # readers never see half a file
                written = counts

    def total(self) -> dict:
        total = self.snapshot()
        if self.folder is not None:
            mine = f"{self.name}-{os.getpid()}.json"
            for path in self.folder.glob(f"{self.name}-*.json"):
                if path.name != mine:
                    total = _summed(total, json.loads(path.read_text()))
        return total


def _summed(a: dict, b: dict) -> dict:
    """Numbers under the same keys added, nested dicts alike."""
    out = dict(a)
    for key, value in b.items():
        out[key] = _summed(out.get(key, {}), value) if isinstance(value, dict) \
            else out.get(key, 0) + value
    return out


class Counter:
    """WSGI middleware: requests, bytes in and bytes out per path."""

    def __init__(self, app) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        self.shared_sql = SharedCounts("sql", SQL_COUNTS.snapshot)
        self.shared = SharedCounts("stats", self.snapshot)
        self.shared_sql.start()
        self.shared.start()

    def snapshot(self) -> dict:
        with self.lock:
            return {p: {"requests": c[0], "bytes_in": c[1], "bytes_out": c[2]}
                    for p, c in self.counts.items()}

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path in (SQL_PATH, STATS_PATH):
            shared = self.shared_sql if path == SQL_PATH else self.shared
            body = json.dumps(shared.total()).encode()
            start_response("200 OK", [("Content-Type", "application/json"),
                                      ("Content-Length", str(len(body)))])
            return [body]
        return self._counted(environ, start_response, path)

    def _counted(self, environ, start_response, path):
        size_in = (len(environ.get("REQUEST_METHOD", "")) + len(path) + 12
                   + int(environ.get("CONTENT_LENGTH") or 0)
                   + sum(len(k) - 5 + len(str(v)) + 4 for k, v in environ.items()
                         if k.startswith("HTTP_")))
        head = [0]

        def counting_start_response(status, headers, exc_info=None):
            head[0] = 13 + len(status) + sum(len(k) + len(v) + 4 for k, v in headers)
            return start_response(status, headers, exc_info)

        chunks = self.app(environ, counting_start_response)
        body_out = 0
        try:
            for chunk in chunks:
                body_out += len(chunk)
                yield chunk
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
            with self.lock:
                count = self.counts[path]
                count[0] += 1
                count[1] += size_in
                count[2] += head[0] + body_out


class CountingAPIServer(APIServer):
    def load(self):
        SQL_COUNTS.install()
        app = super().load()
        app.wsgi_app = Counter(app.wsgi_app)
        return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bind", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    args = parser.parse_args()
    if args.workers > 1:
        # In memory where there is such a place: a rename on a disk's file system can stall
        # the process (py-spy saw 9 % of a process's time in it, flushing every 50 ms).
        shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
        os.environ.setdefault(SHARE_ENV, tempfile.mkdtemp(prefix="edge-bench-stats-", dir=shm))
    CountingAPIServer(ServerConfig.from_environment(args.db), bind=args.bind,
                      workers=args.workers).run()


if __name__ == "__main__":
    main()
