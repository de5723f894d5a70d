"""The edge API as an ASGI app mounted in ``airflow api-server``.

The Flask app of ``edge-kombu api`` (:func:`edge_kombu.server.app.create_app`) runs on
Airflow's metadata database behind a WSGI adapter (a2wsgi), in a thread pool of
``[edge] api_threads`` threads per api-server process. Airflow enters the lifespan of
mounted FastAPI apps, so the edge app (engine, reaper and wake-up threads) is built when
the api-server starts and stopped when it stops. Settings of the edge API other than
the database (lease timeout, maximum wait, ...) come from the ``EDGE_KOMBU_*``
variables, as for ``edge-kombu api``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)


class EdgeASGI:
    """ASGI front of the Flask edge app, built on :meth:`start` (or the first request)."""

    def __init__(self, db_url: str, *, threads: int) -> None:
        self.db_url = db_url
        self.threads = threads
        self._lock = threading.Lock()
        self._flask = None
        self._wsgi = None

    def start(self) -> None:
        from a2wsgi import WSGIMiddleware

        from edge_kombu.airflow.access import AirflowAccess
        from edge_kombu.airflow.bundles import AirflowBundles
        from edge_kombu.server.app import create_app
        from edge_kombu.server.config import ServerConfig

        with self._lock:
            if self._wsgi is not None:
                return
            self._flask = create_app(ServerConfig.from_environment(self.db_url),
                                     access=AirflowAccess(), bundles=AirflowBundles())
            self._wsgi = WSGIMiddleware(self._flask, workers=self.threads)

    def stop(self) -> None:
        with self._lock:
            if self._flask is None:
                return
            # Answer waiting long-polls now, stop the threads, close the pool.
            self._flask.extensions["edge_kombu"].shutdown()
            self._wsgi.executor.shutdown(wait=False)
            self._flask = self._wsgi = None

    async def __call__(self, scope, receive, send) -> None:
        if self._wsgi is None:
            await run_in_threadpool(self.start)
        if scope["type"] == "http":
            scope = dict(scope, headers=_first_authorization(scope["headers"]))
        await self._wsgi(scope, receive, send)


def _first_authorization(headers: list) -> list:
    """Keep the client's Authorization header only.

    Airflow's middlewares may append their own (``simple_auth_manager_all_admins`` adds an
    Airflow JWT to every request); the WSGI adapter would join both into one header.
    """
    seen = False
    kept = []
    for name, value in headers:
        if name.lower() == b"authorization":
            if seen:
                continue
            seen = True
        kept.append((name, value))
    return kept


def create_edge_fastapi_app(db_url: str, *, threads: int) -> FastAPI:
    """A FastAPI app (so Airflow runs its lifespan) serving the edge API at its root."""
    edge = EdgeASGI(db_url, threads=threads)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(edge.start)
        try:
            yield
        finally:
            await run_in_threadpool(edge.stop)

    app = FastAPI(title="edge-kombu API", lifespan=lifespan, openapi_url=None, docs_url=None,
                  redoc_url=None)
    app.mount("/", edge)
    app.state.edge = edge
    return app
