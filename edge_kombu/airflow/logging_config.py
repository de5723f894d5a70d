"""Airflow's logging configuration plus the edge task-log reader, in one setting:

.. code-block:: ini

    [logging]
    logging_config_class = edge_kombu.airflow.logging_config.LOGGING_CONFIG

``LOGGING_CONFIG`` is Airflow's default logging configuration, unchanged. Airflow finds
``REMOTE_TASK_LOG`` beside it (its documented way for a custom logging module to name
the remote log reader), so every api-server reads the logs edge workers pushed from
the database; ``[logging] remote_logging`` stays off. A site with its own logging
module adds ``REMOTE_TASK_LOG = EdgeRemoteLogIO()`` to it instead.
"""

from __future__ import annotations

from copy import deepcopy

from airflow.config_templates.airflow_local_settings import DEFAULT_LOGGING_CONFIG

from edge_kombu.airflow.logs import EdgeRemoteLogIO

LOGGING_CONFIG = deepcopy(DEFAULT_LOGGING_CONFIG)
REMOTE_TASK_LOG = EdgeRemoteLogIO()
DEFAULT_REMOTE_CONN_ID = None
