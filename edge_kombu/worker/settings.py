"""Worker settings read the way Airflow reads them, without importing Airflow.

An option ``[section] key`` comes from the environment variable
``AIRFLOW__SECTION__KEY`` first, then from ``airflow.cfg`` (``$AIRFLOW_CONFIG``, else
``$AIRFLOW_HOME/airflow.cfg``, ``AIRFLOW_HOME`` defaulting to ``~/airflow``), read
with :mod:`configparser`. Stdlib only.
"""

from __future__ import annotations

import configparser
import os
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

ENV_TOKEN = "EDGE_KOMBU_TOKEN"
ENV_TOKEN_FILE = "EDGE_KOMBU_TOKEN_FILE"
ENV_RUN_DIR = "EDGE_KOMBU_RUN_DIR"
ENV_INCLUDE = "EDGE_KOMBU_INCLUDE"

#: Seconds between two heartbeats (Airflow's edge worker: ``[edge] heartbeat_interval``).
DEFAULT_HEARTBEAT_INTERVAL = 10.0


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or "~/airflow").expanduser()


@lru_cache(maxsize=4)
def _read_cfg(path: str, mtime: float) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(path, encoding="utf-8")
    return parser


def config_path() -> Path:
    return Path(os.environ.get("AIRFLOW_CONFIG") or airflow_home() / "airflow.cfg").expanduser()


def option(section: str, key: str, default: str | None = None) -> str | None:
    """``[section] key`` from the environment or airflow.cfg; empty counts as unset."""
    value = os.environ.get(f"AIRFLOW__{section.upper()}__{key.upper()}")
    if value:
        return value
    path = config_path()
    try:
        parser = _read_cfg(str(path), path.stat().st_mtime)
    except (OSError, configparser.Error):
        return default
    value = parser.get(section, key, fallback=None)
    return value if value else default


@dataclass(frozen=True)
class Credential:
    token: str | None = None
    secret: str | None = None
    source: str = ""

    def transport_options(self) -> dict:
        if self.token:
            return {"token": self.token}
        if self.secret:
            return {"secret": self.secret}
        return {}


def credential() -> Credential:
    """Worker token (env, token file) or else the shared secret; empty when none is set."""
    token = os.environ.get(ENV_TOKEN)
    if token:
        return Credential(token=token.strip(), source=ENV_TOKEN)
    token_file = os.environ.get(ENV_TOKEN_FILE) or option("edge", "token_file")
    if token_file:
        path = Path(token_file).expanduser()
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            return Credential(source=f"token file {path} ({exc.strerror})")
        return Credential(token=token or None, source=f"token file {path}")
    secret = option("core", "internal_api_secret_key")
    if secret:
        return Credential(secret=secret, source="[core] internal_api_secret_key")
    return Credential()


def api_url() -> str | None:
    url = option("edge", "api_url")
    return url.strip() if url else None


def heartbeat_interval() -> float:
    raw = option("edge", "heartbeat_interval")
    try:
        value = float(raw) if raw else DEFAULT_HEARTBEAT_INTERVAL
    except ValueError:
        return DEFAULT_HEARTBEAT_INTERVAL
    return value if value > 0 else DEFAULT_HEARTBEAT_INTERVAL


def run_dir() -> Path:
    """Where workers put their control sockets (shared by the worker and ``celery edge``)."""
    explicit = os.environ.get(ENV_RUN_DIR)
    if explicit:
        return Path(explicit).expanduser()
    home = airflow_home()
    if os.environ.get("AIRFLOW_HOME") or home.is_dir():
        return home / "edge_kombu" / "run"
    return Path(tempfile.gettempdir()) / f"edge-kombu-{os.getuid()}"


def includes() -> list[str]:
    """Extra task modules the worker imports (``EDGE_KOMBU_INCLUDE``, comma separated)."""
    raw = os.environ.get(ENV_INCLUDE, "")
    return [name.strip() for name in raw.split(",") if name.strip()]
