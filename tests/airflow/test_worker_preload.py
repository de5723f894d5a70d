"""An edge worker with Airflow imports what a workload's task process needs once, in its
main process before it forks its pool: the Task SDK's supervisor and task runner, and what
the runner imports to parse a DAG file. A pool process (and the task process its supervisor
forks for each workload) starts with them loaded and frozen out of the collector's sight,
instead of importing ~150 modules per workload (~0.35 s of CPU each, which made eight
concurrent workloads on two cores take seconds each; docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util

from edge_kombu.airflow.worker.workload import PRELOAD, PRELOAD_OPTIONAL
from tests.worker.conftest import EdgeWorker, edge_env


def test_pool_processes_start_with_the_task_runner_and_dag_parsing_imported(
        api, token, celery_client, tmp_path):
    worker = EdgeWorker(tmp_path, edge_env(tmp_path, api.url, token), name="preload",
                        queues="remote", concurrency=2)
    try:
        worker.start()
        # No Airflow workload ran in this pool process: whatever it has, it got from the fork.
        installed = [name for name in PRELOAD_OPTIONAL if importlib.util.find_spec(name)]
        wanted = [*PRELOAD, *installed]
        result = celery_client.send_task("tests.edge_tasks.loaded", args=(wanted,),
                                         queue="remote")
        answer = result.get(timeout=60)
        assert answer["imported"] == wanted, worker.log()
        assert "airflow.dag_processing.dagbag" in answer["imported"]
        assert answer["frozen"] > 0
    finally:
        worker.stop()
