"""``EdgeDagBundle``: a DAG bundle an edge worker fetches from the central site.

Configure it per bundle in the worker's ``[dag_processor] dag_bundle_config_list``::

    [{"name": "dags-folder", "classpath": "edge_kombu.airflow.worker.dag_bundle.EdgeDagBundle",
      "kwargs": {}}]

or for every bundle with ``[edge] fetch_dag_bundles = True`` (the worker then puts this
class under the workload's bundle name). Imports Airflow (the bundle base class every
Airflow worker has); the fetching is :mod:`edge_kombu.airflow.worker.bundles`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from airflow.dag_processing.bundles.base import BaseDagBundle

from edge_kombu.airflow.worker.bundles import worker_bundle_cache

log = logging.getLogger(__name__)

CLASSPATH = "edge_kombu.airflow.worker.dag_bundle.EdgeDagBundle"


class EdgeDagBundle(BaseDagBundle):
    """The central site's bundle of the same name, at the version the task asks for."""

    supports_versioning = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._path: Path | None = None
        self._resolved: str | None = None

    def initialize(self) -> None:
        cache = worker_bundle_cache()
        fetched = cache.get(self.name, self.version)
        cache.hold_forever(self.name, fetched.version)  # not pruned while this task runs
        self._path, self._resolved = fetched.path, fetched.version
        log.info("DAG bundle %s version %s: %s (%s)", self.name, fetched.version,
                      fetched.path, f"downloaded {fetched.size} bytes in {fetched.seconds:.2f}s"
                      if fetched.downloaded else "cached")
        super().initialize()

    @property
    def path(self) -> Path:
        if self._path is None:
            raise RuntimeError(f"DAG bundle {self.name!r} is not initialized")
        return self._path

    def get_current_version(self) -> str | None:
        return self._resolved or self.version

    def refresh(self) -> None:
        """Versions are fetched on :meth:`initialize`; a running task keeps its own."""
