"""What runs on an edge host for Airflow: everything else in :mod:`edge_kombu.airflow` is
central (executor, provider, plugin, API mount, log reader, DB manager, demo).

:mod:`.workload`
    the ``execute_workload`` task of ``celery -A edge_kombu`` (runs an ``ExecuteTask``
    workload through the Task SDK, pushes its log to the edge API)
:mod:`.refusal`
    fails a workload this worker cannot run (no Airflow, another major version), saying why

Nothing here imports Flask, SQLAlchemy, :mod:`edge_kombu.server` or the central modules;
Airflow itself only when a workload runs.
"""
