"""What a heartbeat tells about the host and the software: system metrics and versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata

import psutil

from edge_kombu.transport.client import reported_version
from edge_kombu.worker.settings import current


def _disk_path() -> str:
    home = current().airflow_home
    return str(home) if home.is_dir() else os.getcwd()


def prime() -> None:
    """The first ``cpu_percent`` call only starts the measurement."""
    psutil.cpu_percent(interval=None)


def sysinfo() -> dict:
    memory = psutil.virtual_memory()
    try:
        disk_free = psutil.disk_usage(_disk_path()).free
    except OSError:
        disk_free = None
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    info = {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": memory.percent,
        "memory_used_bytes": memory.used,
        "disk_free_bytes": disk_free,
        "load_avg": load,
    }
    if current().team_name:
        info["team_name"] = current().team_name
    return info


def _installed(distribution: str) -> str | None:
    # The distribution's metadata, not an import: importing Airflow in the worker's main
    # process would load its settings (and more) for nothing.
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict:
    import celery

    return {
        "edge_kombu": reported_version(),
        "celery": celery.__version__,
        "python": platform.python_version(),
        "airflow": _installed("apache-airflow"),
        **_bundles(),
    }


def _bundles() -> dict:
    """The DAG bundle versions this worker holds (``[edge] fetch_dag_bundles``)."""
    try:
        from edge_kombu.airflow.worker.bundles import held_versions, worker_bundle_cache

        return held_versions(worker_bundle_cache(current()).root)
    except Exception:  # noqa: BLE001 - a heartbeat never fails for this
        return {}
