"""Hooks an :class:`EdgeWorker` into a Celery worker: start-up checks and a consumer bootstep.

``install(app)`` connects two things:

- at ``worker_init`` (before the pool, the consumer and the banner): the start-up
  checks (API URL, credential, queue names, the API answers ``hello``) and the first
  heartbeat, which registers the worker. A failure ends the process with one line on
  stderr and exit code 1. The first answer's slot budget sizes the pool.
- a consumer bootstep that runs after the task consumer is built and before the
  event loop consumes: it applies the registration's answer (maintenance, queues)
  so no task is taken before it, starts the heartbeat thread, and at exit
  deregisters and removes the control socket.
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import replace

from celery import bootsteps, signals

from edge_kombu import errors
from edge_kombu.protocol import MAX_NAME_LENGTH
from edge_kombu.teams import check_team_name, team_queue
from edge_kombu.transport.client import EdgeClient, client_for
from edge_kombu.transport.settings import ENV_TOKEN, ENV_TOKEN_FILE
from edge_kombu.worker import control
from edge_kombu.worker.lifecycle import EdgeWorker
from edge_kombu.worker.settings import WorkerSettings, broker_client_settings, current

log = logging.getLogger(__name__)

#: Seconds the start-up checks and the heartbeats' client wait for an answer.
READ_TIMEOUT = 15.0
#: Quick retries of the start-up checks when the API cannot be reached.
STARTUP_CONNECT_RETRIES = 2

#: The edge workers of this process (one, unless a test embeds several).
_STARTED: list[EdgeWorker] = []


class StartupError(Exception):
    """The worker cannot start; the message is the one line shown to the user."""


def _client(app, settings: WorkerSettings, *, connect_retries: int) -> EdgeClient:
    try:
        client_settings = broker_client_settings(app)
        return client_for(replace(client_settings, read_timeout=READ_TIMEOUT,
                                  connect_retries=connect_retries))
    except ValueError as exc:
        raise StartupError(f"invalid edge API URL {app.conf.broker_url!r}: {exc}") from None
    except errors.AuthenticationFailed as exc:
        if not exc.message.startswith("no credential"):
            raise StartupError(exc.message) from None
        problem = settings.credential.problem
        raise StartupError(
            f"no credential for {client_settings.url}"
            + (f": {problem}" if problem else "")
            + f"; set {ENV_TOKEN}, a token file ({ENV_TOKEN_FILE} or [edge] "
            "token_file) or the shared secret ([core] internal_api_secret_key)"
        ) from None


def _check_queues(names) -> None:
    for name in names:
        if not name:
            raise StartupError("empty queue name in -Q")
        if len(name) > MAX_NAME_LENGTH:
            raise StartupError(
                f"queue name {name[:40]!r}... is {len(name)} characters long; "
                f"queue names are limited to {MAX_NAME_LENGTH} characters"
            )


def _team_queues(selected, team: str | None) -> list[str]:
    """The names of the queues Celery will consume (``selected``: ``app.amqp.queues``),
    after making each one ``team``'s (:mod:`edge_kombu.teams`)."""
    names = list(selected.consume_from)
    if not team:
        return names
    check_team_name(team)
    qualified = []
    for name in names:
        mine = team_queue(team, name)
        if mine != name:
            selected.select_add(mine, exchange=mine, exchange_type="direct", routing_key=mine)
            selected.deselect(name)
        qualified.append(mine)
    return qualified


def preflight(worker) -> EdgeWorker:
    """Check the configuration and register with the API; raise StartupError."""
    app = worker.app
    settings = current()
    url = app.conf.broker_url
    if not (isinstance(url, str) and url.startswith("edge+")):
        raise StartupError(
            f"no edge API URL: set [edge] api_url in {settings.config_path} "
            "or AIRFLOW__EDGE__API_URL"
        )
    try:
        queues = _team_queues(app.amqp.queues, settings.team_name)
    except ValueError as exc:
        raise StartupError(f"--team-name: {exc}") from None
    _check_queues(queues)
    client = _client(app, settings, connect_retries=STARTUP_CONNECT_RETRIES)
    try:
        client.call("hello")
    except errors.EdgeConnectionError as exc:
        raise StartupError(exc.message) from None
    except errors.AuthenticationFailed as exc:
        source = settings.credential.source or "the configured credential"
        raise StartupError(
            f"the edge API at {client.base_url} rejected the credential ({source}): {exc.message}"
        ) from None
    except errors.EdgeError as exc:
        raise StartupError(f"the edge API at {client.base_url} refused: {exc.message}") from None
    client.close()
    # Heartbeats retry on their own schedule: no quick retries (and their log lines) inside.
    edge = EdgeWorker(
        name=worker.hostname, queues=queues, concurrency=int(worker.concurrency),
        client=_client(app, settings, connect_retries=0),
        interval=settings.heartbeat_interval,
        socket_path=control.endpoint(settings.run_dir, worker.hostname, settings.control),
        team=settings.team_name,
    )
    try:
        answer = edge.register()
    except errors.EdgeError as exc:
        raise StartupError(f"registration with the edge API failed: {exc.message}") from None
    if answer.get("concurrency"):
        worker.concurrency = edge.concurrency = int(answer["concurrency"])
        edge._pending_concurrency = None  # the pool is built with it
    return edge


def _start_control(edge: EdgeWorker) -> control.ControlServer:
    server = control.ControlServer(edge.socket_path, edge.handle)
    try:
        server.start()
    except (control.ControlError, OSError) as exc:
        raise StartupError(f"control socket: {exc}") from None
    atexit.register(server.close)
    return server


class EdgeStep(bootsteps.StartStopStep):
    """Consumer bootstep: the edge lifecycle around the task consumer."""

    label = "Edge"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c, **kwargs) -> None:
        super().__init__(c, **kwargs)
        self.edge: EdgeWorker | None = getattr(c.controller, "edge_worker", None)

    def start(self, c) -> None:
        if self.edge is not None:
            self.edge.attach(c)

    def stop(self, c) -> None:
        if self.edge is not None:
            self.edge.detach()

    def shutdown(self, c) -> None:
        _close(c.controller)


def _close(worker) -> None:
    edge = getattr(worker, "edge_worker", None)
    server = getattr(worker, "edge_control", None)
    if server is not None:
        server.close()
    if edge is not None:
        edge.close()


def install(app) -> None:
    """Give ``app``'s workers the edge lifecycle (heartbeats, maintenance, local control)."""
    app.steps["consumer"].add(EdgeStep)
    app.edge_kombu_checks_start = True  # its own preflight, not worker/startup.py's

    @signals.worker_init.connect(weak=False)
    def edge_worker_init(sender=None, **kwargs) -> None:
        if sender is None or sender.app is not app:
            return
        try:
            edge = preflight(sender)
            try:
                sender.edge_control = _start_control(edge)
            except StartupError:
                edge.close()  # registered: say it went offline again
                raise
        except StartupError as exc:
            raise SystemExit(f"edge-kombu worker {sender.hostname}: {exc}") from None
        sender.edge_worker = edge
        _STARTED.append(edge)
        log.info("registered with the edge API at %s as %s (control socket %s)",
                 edge.client.base_url, edge.name, edge.socket_path)

    @signals.worker_shutting_down.connect(weak=False)
    def edge_worker_shutting_down(sender=None, **kwargs) -> None:
        # Celery's own warm shutdown (SIGTERM, Ctrl-C, `celery control shutdown`): the
        # heartbeats say "terminating" while the running tasks finish.
        for edge in _STARTED:
            if edge.name == sender:
                edge.shutting_down()

    @signals.worker_shutdown.connect(weak=False)
    def edge_worker_shutdown(sender=None, **kwargs) -> None:
        if sender is not None and sender.app is app:
            _close(sender)

