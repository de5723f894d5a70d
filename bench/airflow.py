"""Airflow end to end: trigger→success of a one-task DAG and of a DAG of 20 independent
tasks, for our EdgeExecutor, Airflow's CeleryExecutor with Redis, and Airflow's own edge
executor (``apache-airflow-providers-edge3``), each on a scratch PostgreSQL database.

Sites are :class:`tests.airflow.site.AirflowSite` run from another virtualenv:

* ``--airflow-venv`` (``$BENCH_AIRFLOW_VENV``, default ``/work/afvenv``): Airflow 3.3.2,
  providers-celery and this project (``pip install -e '.[airflow,test]'``);
* ``--edge3-venv`` (``$BENCH_EDGE3_VENV``, default ``/work/bench-venvs/edge3``), made with::

      python3.11 -m venv /work/bench-venvs/edge3
      /work/bench-venvs/edge3/bin/pip install apache-airflow==3.3.2 \\
          apache-airflow-providers-edge3==5.1.0 psycopg2-binary asyncpg

  The edge3 executor is skipped (and said so) when that virtualenv is missing.

Every executor runs with its defaults, except: 8 task slots on its one worker, and the
two site-wide speed settings of AirflowSite (scheduler idle sleep 0.2 s, task heartbeat
1 s), the same for all three. Trigger→success is the REST trigger call to the run's
``end_date``; the first run of each site is a warm-up and not counted.
"""

from __future__ import annotations

import os
import statistics
import time
import uuid
from datetime import datetime
from pathlib import Path

from bench import env
from tests.airflow.site import AirflowSite
from tests.helpers import wait_for

EXECUTORS = ("edge-kombu", "celery-redis", "edge3")
CONCURRENCY = "8"
WIDE = 20

DAGS = f'''
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def bench_one():
    task(task_id="noop")(lambda: None)()


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False,
     max_active_tasks={WIDE})
def bench_wide():
    for i in range({WIDE}):
        task(task_id=f"noop_{{i}}")(lambda: None)()


bench_one()
bench_wide()
'''


def venvs(airflow_venv: str | None, edge3_venv: str | None) -> dict[str, Path]:
    return {
        "airflow": Path(airflow_venv or os.environ.get("BENCH_AIRFLOW_VENV", "/work/afvenv")),
        "edge3": Path(edge3_venv or os.environ.get("BENCH_EDGE3_VENV",
                                                   "/work/bench-venvs/edge3")),
    }


def _site(kind: str, tmp: Path, db_url: str, bins: dict[str, Path]) -> AirflowSite:
    if kind == "edge-kombu":
        return AirflowSite(tmp, db_url=db_url, bin_dir=bins["airflow"] / "bin")
    if kind == "celery-redis":
        site = AirflowSite(tmp, executor="CeleryExecutor", api_enabled=False, db_url=db_url,
                           bin_dir=bins["airflow"] / "bin")
        site.env.update(AIRFLOW__CELERY__BROKER_URL=env.REDIS_URL.rsplit("/", 1)[0] + "/14",
                        AIRFLOW__CELERY__RESULT_BACKEND=f"db+{db_url}")
    else:
        site = AirflowSite(tmp, executor="airflow.providers.edge3.executors.EdgeExecutor",
                           db_url=db_url, bin_dir=bins["edge3"] / "bin")
        site.env["AIRFLOW__EDGE__API_URL"] = f"{site.base_url}/edge_worker/v1/rpcapi"
    if kind != "edge-kombu":
        site.ready_paths = ["/api/v2/version", "/execution/health"]
    return site


def _start_worker(kind: str, site: AirflowSite) -> None:
    if kind == "edge-kombu":
        site.start_edge_worker("bench", queues="default", concurrency=int(CONCURRENCY))
        return
    if kind == "celery-redis":
        args = [str(site.bin / "airflow"), "celery", "worker", "--concurrency", CONCURRENCY,
                "--queues", "default"]
        ready = " ready."
    else:
        args = [str(site.bin / "airflow"), "edge", "worker", "--concurrency", CONCURRENCY,
                "--queues", "default"]
        ready = ""  # it logs nothing when registered: the warm-up run waits for it
    process = site.start_process("worker-bench", args)

    def started() -> bool:
        if not process.alive():
            raise AssertionError(f"{kind} worker exited:\n{process.log()}")
        return ready in process.log()

    wait_for(started, timeout=120, interval=0.2, message=f"{kind} worker ready")


def _trigger(site: AirflowSite, dag_id: str) -> float:
    """Seconds from the trigger call to the run's end_date (it must succeed)."""
    run_id = f"bench_{uuid.uuid4().hex[:8]}"
    sent = time.time()
    answer = site.rest("POST", f"/dags/{dag_id}/dagRuns",
                       json={"dag_run_id": run_id, "logical_date": None})
    assert answer.status_code in (200, 201), answer.text
    state = site.wait_for_dag_run(dag_id, run_id, timeout=180)
    assert state == "success", f"{dag_id} run {run_id}: {state}"
    end = site.rest("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json()["end_date"]
    return datetime.fromisoformat(end.replace("Z", "+00:00")).timestamp() - sent


def measure(kind: str, bins: dict[str, Path], runs: int) -> dict:
    from tests.conftest import scratch_database

    tmp = env.tmpdir(f"airflow-{kind}")
    with scratch_database(env.POSTGRES_URL) as db_url:
        site = _site(kind, tmp, db_url, bins)
        site.add_dag("bench_dags.py", DAGS)
        try:
            env.record([str(site.bin / "airflow"), "db", "migrate"],
                       {"AIRFLOW__CORE__EXECUTOR": site.env["AIRFLOW__CORE__EXECUTOR"]})
            site.airflow("db", "migrate", timeout=600)
            site.start_api_server()
            site.start_scheduler()
            site.start_dag_processor()
            _start_worker(kind, site)
            for process in site.processes:
                env.record(process.args, {"AIRFLOW__CORE__EXECUTOR":
                                          site.env["AIRFLOW__CORE__EXECUTOR"]})
            site.wait_for_dag("bench_one", timeout=180)
            site.wait_for_dag("bench_wide", timeout=180)
            _trigger(site, "bench_one")  # warm-up: first imports, first connections
            one = [_trigger(site, "bench_one") for _ in range(runs)]
            wide = [_trigger(site, "bench_wide") for _ in range(max(1, runs // 2 + 1))]
        except AssertionError as exc:
            raise AssertionError(f"{kind}: {exc}\n{site.logs()[-8000:]}") from None
        finally:
            site.stop()
    result = {
        "one_task_s": round(statistics.median(one), 2), "one_task_runs": [round(x, 2) for x in one],
        "wide_s": round(statistics.median(wide), 2), "wide_runs": [round(x, 2) for x in wide],
    }
    print(f"airflow {kind}:", result, flush=True)
    return result


def run(*, quick: bool, airflow_venv: str | None = None, edge3_venv: str | None = None,
        runs: int | None = None, executors: tuple[str, ...] = EXECUTORS) -> dict:
    bins = venvs(airflow_venv, edge3_venv)
    runs = runs or (1 if quick else 5)
    results, skipped = {}, {}
    for kind in executors:
        needs = bins["edge3"] if kind == "edge3" else bins["airflow"]
        if not (needs / "bin" / "airflow").exists():
            skipped[kind] = f"no Airflow in {needs} (see python -m bench airflow --help)"
            print(f"skipping {kind}: {skipped[kind]}", flush=True)
            continue
        results[kind] = measure(kind, bins, runs)
    base = results.get("celery-redis")
    if base:
        for row in results.values():
            row["vs_celery_redis"] = {k: round(row[k] / base[k], 2)
                                      for k in ("one_task_s", "wide_s")}
    return {"runs": runs, "wide_tasks": WIDE, "concurrency": int(CONCURRENCY),
            "venvs": {k: str(v) for k, v in bins.items()}, "executors": results,
            "skipped": skipped}
