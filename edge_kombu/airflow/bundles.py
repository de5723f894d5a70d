"""The central site's DAG bundles, for the edge API inside ``airflow api-server``.

:class:`AirflowBundles` is the bundle source (:class:`edge_kombu.server.bundles.BundleSource`)
handed to the edge app by :mod:`edge_kombu.airflow.api`: Airflow's bundle manager reads
``[dag_processor] dag_bundle_config_list`` and prepares the bundle at the version asked
for (a versioned bundle such as ``GitDagBundle`` checks that version out in its own
storage); the edge API archives that folder. A bundle without versions
(``LocalDagBundle``) is served at its current content.
"""

from __future__ import annotations

from pathlib import Path

from edge_kombu.server.bundles import BundleContent


class AirflowBundles:
    def locate(self, name: str, version: str | None) -> BundleContent:
        from airflow.dag_processing.bundles.manager import DagBundlesManager

        manager = DagBundlesManager()
        try:
            bundle = manager.get_bundle(name, version if version else None)
        except ValueError:
            raise LookupError(
                f"no DAG bundle {name!r} in the central [dag_processor] dag_bundle_config_list "
                f"(bundles: {sorted(manager.get_all_bundle_names())})") from None
        if version is not None and not bundle.supports_versioning:
            raise LookupError(f"DAG bundle {name!r} has no versions; ask for its current "
                              "content (no version)")
        bundle.initialize()
        resolved = None
        if bundle.supports_versioning:
            current = version or bundle.get_current_version()
            resolved = getattr(current, "version", current)
        return BundleContent(Path(bundle.path), resolved)
