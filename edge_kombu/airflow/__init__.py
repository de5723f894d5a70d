"""edge-kombu as an Apache Airflow provider.

Central site (``airflow.cfg`` or ``AIRFLOW__<SECTION>__<KEY>`` variables)::

    [core]
    executor = edge_kombu.airflow.EdgeExecutor    # or LocalExecutor,edge_kombu.airflow.EdgeExecutor
    internal_api_secret_key = <random string>      # shared with the edge workers
    [edge]
    api_enabled = True                             # serve the edge API from `airflow api-server`
    api_url = https://airflow.example.com/edge/    # where the executor and the workers find it

Edge site: ``celery -A edge_kombu worker -Q default`` with the same ``[edge] api_url`` and
credential, ``[core] execution_api_server_url`` pointing at the api-server's
``/execution/``, and the DAG files; no database credentials.

What the provider brings (``airflow providers list`` shows ``edge-kombu``):

=========================  =====================================================
executor                   :class:`EdgeExecutor` (:mod:`.executor`): Airflow's
                           CeleryExecutor publishing over the edge API, with
                           ``pool_slots`` and priority in each message
``[edge]`` options         documented in :mod:`.provider` (``airflow config list``)
``airflow db migrate``     creates/upgrades the edge tables (:mod:`.db_manager`)
``airflow api-server``     with ``[edge] api_enabled``, serves the edge API under
                           ``/edge`` (:mod:`.plugin`)
edge workers               run ``ExecuteTask`` workloads (:mod:`.worker`)
``airflow edge ...``       the edge provider's commands (:mod:`.cli`): start and
                           steer local workers, steer remote ones centrally
=========================  =====================================================

Sides: every module of this package runs at the central site, except the subpackage
:mod:`edge_kombu.airflow.worker`, which is all of it that runs on an edge host (and
imports none of the central modules).

Importing this package imports neither Airflow nor Celery: the executor class is loaded
on first access of ``edge_kombu.airflow.EdgeExecutor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge_kombu.airflow.executor import EdgeExecutor

__all__ = ["EdgeExecutor"]


def __getattr__(name: str):
    if name == "EdgeExecutor":
        from edge_kombu.airflow.executor import EdgeExecutor

        return EdgeExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
