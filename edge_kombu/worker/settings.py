"""An edge worker's settings, read the way Airflow reads them, without importing Airflow.

:func:`current` reads them once per process into a frozen :class:`WorkerSettings`: the
``celery -A edge_kombu`` app configures itself from it (see :mod:`edge_kombu.celery`),
and the lifecycle, ``celery edge``, the heartbeats' system info and the Airflow refusal
read it. An option ``[section] key`` comes from the environment variable
``AIRFLOW__SECTION__KEY`` first, then from ``airflow.cfg`` (``$AIRFLOW_CONFIG``, else
``$AIRFLOW_HOME/airflow.cfg``, ``AIRFLOW_HOME`` defaulting to ``~/airflow``), read with
:mod:`configparser`; empty counts as unset. Stdlib only.

How the API is reached from there (URL, credential, TLS) is the transport's: the app
hands it over as Celery settings, and :func:`broker_client_settings` reads them back as
:class:`~edge_kombu.transport.settings.ClientSettings` for the worker's own clients.
"""

from __future__ import annotations

import configparser
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from edge_kombu.transport.settings import ClientSettings, Credential, find_credential, ssl_options
from edge_kombu.worker import control

ENV_RUN_DIR = "EDGE_KOMBU_RUN_DIR"
ENV_INCLUDE = "EDGE_KOMBU_INCLUDE"
#: The team of this worker (``airflow edge worker --team-name``), shown with the worker.
ENV_TEAM_NAME = "EDGE_KOMBU_TEAM_NAME"

#: Seconds between two heartbeats (Airflow's edge worker: ``[edge] heartbeat_interval``).
DEFAULT_HEARTBEAT_INTERVAL = 10.0
#: ``task_default_queue`` unless ``[operators] default_queue`` names another (as Airflow).
DEFAULT_QUEUE = "default"
#: ``[edge] push_logs`` values that mean yes (as Airflow's ``conf.getboolean``).
_TRUE = ("true", "t", "1", "yes", "on")


class AirflowOptions:
    """Reads ``[section] key`` from the environment, then ``airflow.cfg`` (parsed once)."""

    def __init__(self, env: Mapping[str, str], config_path: Path) -> None:
        self.env = env
        self.config_path = config_path
        self._parser: configparser.ConfigParser | None = None

    def __call__(self, section: str, key: str) -> str | None:
        value = self.env.get(f"AIRFLOW__{section.upper()}__{key.upper()}")
        if value:
            return value
        return self._cfg().get(section, key, fallback=None) or None

    def _cfg(self) -> configparser.ConfigParser:
        if self._parser is None:
            parser = configparser.ConfigParser(interpolation=None, strict=False)
            try:
                parser.read(self.config_path, encoding="utf-8")
            except configparser.Error:
                parser = configparser.ConfigParser(interpolation=None, strict=False)
            self._parser = parser
        return self._parser


@dataclass(frozen=True, kw_only=True)
class WorkerSettings:
    """What an edge worker reads from its environment and ``airflow.cfg``."""

    airflow_home: Path
    config_path: Path
    #: ``[edge] api_url``: the edge API (broker and result backend are ``edge+<api_url>``).
    api_url: str | None = None
    credential: Credential = field(default_factory=Credential)
    #: ``broker_use_ssl`` from ``[edge] ca_bundle``, ``client_cert``, ``client_key``.
    ssl: Mapping[str, str] | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    default_queue: str = DEFAULT_QUEUE
    #: Extra task modules the worker imports (``EDGE_KOMBU_INCLUDE``, comma separated).
    includes: tuple[str, ...] = ()
    #: Where workers put their control sockets (shared by the worker and ``celery edge``).
    run_dir: Path
    #: How ``celery edge`` reaches workers: ``unix`` sockets or loopback ``tcp``
    #: (``EDGE_KOMBU_CONTROL``; default: unix where the platform has it).
    control: str = "unix"
    #: ``[edge] push_logs``: push Airflow task logs to the edge API.
    push_logs: bool = True
    #: ``[logging] base_log_folder``: where Airflow task logs are written on this host.
    base_log_folder: Path
    #: ``[edge] worker_concurrency``: the slot budget without ``-c`` (else Celery's default).
    worker_concurrency: int | None = None
    #: ``EDGE_KOMBU_TEAM_NAME``: the team reported with the heartbeats.
    team_name: str | None = None

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> WorkerSettings:
        """Read every setting from ``env`` (default: the process environment) and
        ``airflow.cfg``."""
        env = os.environ if env is None else env
        home = Path(env.get("AIRFLOW_HOME") or "~/airflow").expanduser()
        config_path = Path(env.get("AIRFLOW_CONFIG") or home / "airflow.cfg").expanduser()
        option = AirflowOptions(env, config_path)
        url = option("edge", "api_url")
        return cls(
            airflow_home=home,
            config_path=config_path,
            api_url=url.strip() if url else None,
            credential=find_credential(option, env),
            ssl=ssl_options(option),
            heartbeat_interval=_positive_float(option("edge", "heartbeat_interval"),
                                               DEFAULT_HEARTBEAT_INTERVAL),
            default_queue=option("operators", "default_queue") or DEFAULT_QUEUE,
            includes=tuple(name.strip() for name in env.get(ENV_INCLUDE, "").split(",")
                           if name.strip()),
            run_dir=_run_dir(env, home),
            control=control.channel(env),
            push_logs=(option("edge", "push_logs") or "True").strip().lower() in _TRUE,
            base_log_folder=Path(option("logging", "base_log_folder")
                                 or home / "logs").expanduser(),
            worker_concurrency=_positive_int(option("edge", "worker_concurrency")),
            team_name=(env.get(ENV_TEAM_NAME) or "").strip()[:256] or None,
        )


@cache
def current() -> WorkerSettings:
    """This process's settings, read on first use (a worker's environment and
    ``airflow.cfg`` are what it started with)."""
    return WorkerSettings.load()


def broker_client_settings(app) -> ClientSettings | None:
    """The API client settings of ``app``'s ``edge+`` broker connection (else None)."""
    url = app.conf.broker_url
    if not (isinstance(url, str) and url.startswith("edge+")):
        return None
    return ClientSettings.from_kombu(url[len("edge+"):], app.conf.broker_transport_options,
                                     app.conf.broker_use_ssl)


def _positive_float(raw: str | None, default: float) -> float:
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value > 0 else default


def _positive_int(raw: str | None) -> int | None:
    try:
        value = int(raw) if raw else None
    except ValueError:
        return None
    return value if value and value > 0 else None


def _run_dir(env: Mapping[str, str], home: Path) -> Path:
    explicit = env.get(ENV_RUN_DIR)
    if explicit:
        return Path(explicit).expanduser()
    if env.get("AIRFLOW_HOME") or home.is_dir():
        return home / "edge_kombu" / "run"
    return Path(tempfile.gettempdir()) / f"edge-kombu-{control.user_id()}"
