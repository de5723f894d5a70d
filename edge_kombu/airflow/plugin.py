"""Airflow plugin: with ``[edge] api_enabled = True``, ``airflow api-server`` serves the edge API.

The API is mounted under ``/edge`` (``edge_kombu.airflow.provider.API_PREFIX``), on the
Airflow metadata database (``[database] sql_alchemy_conn``): workers and the
EdgeExecutor then use ``[edge] api_url = https://<api-server>/edge``. Registered through
the ``airflow.plugins`` entry point; the mounted app is only built where Airflow asks
for FastAPI apps (the api-server), so other Airflow processes pay nothing for it.
``edge-kombu api`` remains available as a separate server.

Its monitoring pages (Edge Worker Hosts, Edge Worker Jobs, Edge Queues, at ``/edge/ui/``)
appear in Airflow's Admin menu; Airflow's auth manager decides who sees them and who
acts (:mod:`edge_kombu.airflow.access`).
"""

from __future__ import annotations

from functools import cached_property

from airflow.configuration import conf
from airflow.plugins_manager import AirflowPlugin

from edge_kombu.airflow.provider import API_PREFIX, DEFAULT_API_THREADS


def api_enabled() -> bool:
    return conf.getboolean("edge", "api_enabled", fallback=False)


#: The monitoring pages in Airflow's Admin menu, embedded in its UI.
PAGES = (
    ("Edge Worker Hosts", "workers"),
    ("Edge Worker Jobs", "jobs"),
    ("Edge Queues", "queues"),
)


class EdgeKombuPlugin(AirflowPlugin):
    """Mounts the edge API and its pages in the api-server when ``[edge] api_enabled``."""

    name = "edge_kombu"

    @cached_property
    def external_views(self) -> list[dict]:
        if not api_enabled():
            return []
        return [{
            "name": title,
            "href": f"{API_PREFIX}/ui/{page}",
            "url_route": f"edge_{page}",
            "destination": "nav",
            "category": "admin",
        } for title, page in PAGES]

    @cached_property
    def fastapi_apps(self) -> list[dict]:
        if not api_enabled():
            return []
        from edge_kombu.airflow.api import create_edge_fastapi_app
        from edge_kombu.server.db import normalize_url

        db_url = normalize_url(conf.get_mandatory_value("database", "sql_alchemy_conn"))
        threads = conf.getint("edge", "api_threads", fallback=DEFAULT_API_THREADS)
        return [{
            "app": create_edge_fastapi_app(db_url, threads=threads),
            "url_prefix": API_PREFIX,
            "name": "edge-kombu API",
        }]
