"""Serve the edge API with gunicorn's gevent worker (long-polls cost a greenlet each),
bounded against hostile clients by :class:`~edge_kombu.server.connections.EdgeGeventWorker`."""

from __future__ import annotations

import logging
import os
import tempfile

from gunicorn.app.base import BaseApplication

from edge_kombu.server.config import ServerConfig
from edge_kombu.server.connections import raise_open_files_limit

log = logging.getLogger(__name__)

WORKER_CLASS = "edge_kombu.server.connections.EdgeGeventWorker"


class APIServer(BaseApplication):
    """gunicorn application whose workers each build the app after forking."""

    def __init__(
        self,
        config: ServerConfig,
        *,
        bind: str,
        workers: int = 1,
        certfile: str | None = None,
        keyfile: str | None = None,
        ca_certs: str | None = None,
        require_client_cert: bool = False,
        worker_connections: int | None = None,
        access_log: bool = False,
    ) -> None:
        self.config_obj = config
        if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Counters of all processes in one /metrics: prometheus-client's multiprocess
            # mode, set before the workers fork and import it.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="edge-kombu-prom-")
        wanted = worker_connections or config.max_connections
        # Set here, before the workers fork: they inherit the limit.
        fitting = raise_open_files_limit(wanted)
        if fitting < wanted:
            log.warning("serving at most %d connections per process, not %d: the limit on open "
                        "files (ulimit -n) is too low; raise its hard limit", fitting, wanted)
        self.options = {
            "bind": bind,
            "workers": workers,
            "worker_class": WORKER_CLASS,
            "worker_connections": fitting,
            # Keep-alive longer than any long-poll, so workers reuse their connections.
            "keepalive": int(config.max_wait) + 65,
            "graceful_timeout": 3,  # waiting long-polls are answered at once on stop
            "timeout": 60,
            "certfile": certfile,
            "keyfile": keyfile,
            "ca_certs": ca_certs,
            "cert_reqs": 2 if require_client_cert else 0,
            "accesslog": "-" if access_log else None,
            "errorlog": "-",
            "proc_name": "edge-kombu-api",
            # Several API servers may run on one host; none needs gunicorn's control socket.
            "control_socket_disable": True,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if value is not None:
                self.cfg.set(key, value)
        self.cfg.set("post_worker_init", self._post_worker_init)
        self.cfg.set("child_exit", _forget_metrics_of)

    def _post_worker_init(self, worker) -> None:
        """On a graceful stop, answer waiting long-polls at once instead of after their wait."""
        handle_exit = worker.handle_exit

        def exit_and_wake(sig, frame):
            self.app.extensions["edge_kombu"].waiters.close()
            handle_exit(sig, frame)

        worker.handle_exit = exit_and_wake
        import signal

        signal.signal(signal.SIGTERM, exit_and_wake)

    def load(self):
        from edge_kombu.server.sql import make_driver_cooperative

        # gunicorn's gevent worker has monkey-patched by now; make the driver cooperative too.
        make_driver_cooperative(self.config_obj.db_url)
        from edge_kombu.server.app import create_app

        self.app = create_app(self.config_obj)
        return self.app


def _forget_metrics_of(_server, worker) -> None:
    """Drop an exited process's live gauges from the multiprocess metrics."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
