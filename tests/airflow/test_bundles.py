"""DAG code over the edge link: an edge worker with an empty DAG folder and
``[edge] fetch_dag_bundles`` runs DAGs that exist only at the central site, fetching their
bundles from the edge API: the central ``LocalDagBundle`` (versioned by content) and a
git repository through Airflow's ``GitDagBundle`` (versioned by commit). Both tests share
one site (start-up costs ~30 s)."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge_kombu import errors
from edge_kombu.transport.client import EdgeClient
from tests.airflow.site import AirflowSite
from tests.helpers import wait_for

DAG_ID = "edge_bundle"
BUNDLE = "dags-folder"

DAG_SOURCE = '''
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

CODE_VERSION = "{marker}"


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def edge_bundle():
    @task(retries=0)
    def which_code():
        return CODE_VERSION

    which_code()


edge_bundle()
'''
MAX_BUNDLE_BYTES = 200_000


def _write_dag(site: AirflowSite, marker: str) -> None:
    site.add_dag("edge_bundle.py", DAG_SOURCE.format(marker=marker))


def _trigger(site: AirflowSite, dag_id: str, run_id: str) -> None:
    """Through the REST API (the CLI costs seconds of start-up per call)."""
    answer = site.rest("POST", f"/dags/{dag_id}/dagRuns",
                       json={"dag_run_id": run_id, "logical_date": None})
    assert answer.status_code == 200, answer.text


def _run(site: AirflowSite, run_id: str) -> tuple[str, dict]:
    _trigger(site, DAG_ID, run_id)
    state = site.wait_for_dag_run(DAG_ID, run_id)
    (ti,) = site.task_instances(DAG_ID, run_id)
    return state, ti


def _task_log(site: AirflowSite, run_id: str) -> str:
    logs = list((site.home / "logs").glob(f"dag_id={DAG_ID}/run_id={run_id}/**/*.log"))
    return "\n".join(path.read_text() for path in logs)


def _versions(cache: Path, bundle: str = BUNDLE) -> list[str]:
    """The versions of ``bundle`` unpacked in a worker's cache."""
    return sorted(meta["version"] for p in cache.glob("*/*/.edge-bundle.json")
                  if (meta := json.loads(p.read_text()))["name"] == bundle)


def _start_delay(site: AirflowSite, run_id: str, ti: dict) -> float:
    run = site.rest("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}").json()
    return (datetime.fromisoformat(ti["start_date"])
            - datetime.fromisoformat(run["start_date"])).total_seconds()


def _held(site: AirflowSite) -> dict:
    with sqlite3.connect(site.db_path) as conn:
        (versions,) = conn.execute("SELECT versions FROM edge_kombu_worker").fetchone()
    return json.loads(versions)


def _token(site: AirflowSite, worker: str, queue: str) -> str:
    done = subprocess.run(
        [str(site.bin / "edge-kombu"), "token", "create", "--worker", worker, "--queues", queue,
         "--db", site.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]],
        capture_output=True, text=True, env=site.environ(), timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def bundle_site(tmp_path_factory):
    """One central site with two bundles (its DAG folder as a LocalDagBundle, and a git
    repository as a versioned bundle) and one edge worker that has neither."""
    tmp = tmp_path_factory.mktemp("bundles")
    repo, release = tmp / "repo", tmp / "release"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    old = _commit(repo, PINNED_DAG.format(marker="old", release=release))
    site = AirflowSite(tmp)
    empty = tmp / "worker-dags"
    empty.mkdir()
    site.env.update({
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps([
            {"name": BUNDLE, "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
             "kwargs": {}},
            # Airflow's GitDagBundle on a local repository (no connection: repo_url only).
            {"name": "git-dags", "classpath": "airflow.providers.git.bundles.git.GitDagBundle",
             "kwargs": {"tracking_ref": "main", "repo_url": str(repo)}}]),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "1",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "2",
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(tmp / "bundle-storage"),
        "AIRFLOW__EDGE__BUNDLE_CACHE_DIR": str(tmp / "central-cache"),
        "AIRFLOW__EDGE__MAX_BUNDLE_BYTES": str(MAX_BUNDLE_BYTES),
        "AIRFLOW__EDGE__BUNDLE_QUEUES": '{"dags-folder": ["default"]}',
    })
    _write_dag(site, "v1")
    try:
        site.start_central()
        site.start_edge_worker(
            "edge1", queues="default", concurrency=2, AIRFLOW__CORE__DAGS_FOLDER=str(empty),
            AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST="[]",
            AIRFLOW__EDGE__FETCH_DAG_BUNDLES="True", AIRFLOW__EDGE__HEARTBEAT_INTERVAL="2",
            AIRFLOW__EDGE__BUNDLE_CACHE_DIR=str(tmp / "worker-cache"))
        yield SimpleNamespace(site=site, repo=repo, release=release, old=old, empty=empty,
                              central_cache=tmp / "central-cache",
                              worker_cache=tmp / "worker-cache")
    finally:
        site.stop()


@pytest.mark.timeout(300)
def test_edge_worker_fetches_the_central_bundle(bundle_site):
    site, empty = bundle_site.site, bundle_site.empty
    central_cache = bundle_site.central_cache
    worker_cache = bundle_site.worker_cache
    timings = {}
    try:
        site.wait_for_dag(DAG_ID)
        central = EdgeClient(site.edge_url,
                             secret=site.env["AIRFLOW__CORE__INTERNAL_API_SECRET_KEY"])

        # 1. First task: the bundle is downloaded; a second one finds it cached.
        state, ti = _run(site, "v1_first")
        assert state == "success", _task_log(site, "v1_first")
        assert site.xcom(DAG_ID, "v1_first", "which_code") == "v1"
        assert list(empty.iterdir()) == []
        assert len(_versions(worker_cache)) == 1
        timings["download"] = _start_delay(site, "v1_first", ti)
        assert "downloaded" in _task_log(site, "v1_first")
        state, ti = _run(site, "v1_again")
        assert state == "success"
        assert "(cached)" in _task_log(site, "v1_again")
        timings["cached"] = _start_delay(site, "v1_again", ti)

        # 2. A changed file at the centre reaches the worker on the next task.
        _write_dag(site, "v2")
        state, _ = _run(site, "v2")
        assert state == "success", _task_log(site, "v2")
        assert site.xcom(DAG_ID, "v2", "which_code") == "v2"
        assert len(_versions(worker_cache)) == 2

        # 3. A tampered archive is refused, and the task says why; once right, it runs.
        _write_dag(site, "v3")
        resolved = central.call("bundles/resolve", {"name": BUNDLE})
        archive = next(central_cache.glob(f"*/{resolved['sha256']}.tar.gz"))
        good = archive.read_bytes()
        archive.write_bytes(good[: len(good) // 2])  # truncated on the central disk
        state, _ = _run(site, "v3_tampered")
        assert state == "failed"
        log = _task_log(site, "v3_tampered")
        assert "hash mismatch" in log and BUNDLE in log and resolved["version"] in log, log
        assert len(_versions(worker_cache)) == 2  # nothing unpacked
        archive.write_bytes(good)
        cleared = site.rest("POST", f"/dags/{DAG_ID}/clearTaskInstances",
                            json={"dag_run_id": "v3_tampered", "only_failed": True,
                                  "dry_run": False})
        assert cleared.status_code == 200, cleared.text
        wait_for(lambda: site.dag_run_state(DAG_ID, "v3_tampered") != "failed", timeout=30,
                 interval=0.2, message="the failed run cleared")
        assert site.wait_for_dag_run(DAG_ID, "v3_tampered") == "success"  # its second try
        assert site.xcom(DAG_ID, "v3_tampered", "which_code") == "v3"

        # 4. Scope: a credential whose queues were not granted the bundle gets 403.
        other = EdgeClient(site.edge_url, token=_token(site, "site-b", "other"))
        with pytest.raises(errors.Forbidden, match="fetching DAG bundle 'dags-folder'"):
            other.call("bundles/resolve", {"name": BUNDLE})
        with pytest.raises(errors.Forbidden):
            other.download("bundles/archive", {"name": BUNDLE, "sha256": resolved["sha256"]},
                           io.BytesIO(), max_bytes=10**7)
        granted = EdgeClient(site.edge_url, token=_token(site, "site-a", "default"))
        assert granted.call("bundles/resolve", {"name": BUNDLE})["sha256"] == resolved["sha256"]
        with pytest.raises(errors.NotFound, match="no DAG bundle 'nope'"):
            central.call("bundles/resolve", {"name": "nope"})

        # 5. Over the size limit: 413 naming the limit at the centre, and on the task.
        (site.dags / "big.bin").write_bytes(b"x" * (MAX_BUNDLE_BYTES + 1))
        with pytest.raises(errors.PayloadTooLarge, match=f"limit of {MAX_BUNDLE_BYTES} bytes"):
            central.call("bundles/resolve", {"name": BUNDLE})
        state, _ = _run(site, "too_big")
        assert state == "failed"
        assert f"limit of {MAX_BUNDLE_BYTES} bytes" in _task_log(site, "too_big")
        timings["archive_bytes"] = resolved["size"]

        # The worker's heartbeat tells which versions it holds (Worker hosts page).
        wait_for(lambda: _held(site).get(f"bundle {BUNDLE}", "").startswith(
            f"{resolved['version']} (+2 older)"), timeout=30, interval=0.5,
            message="the heartbeat names the bundle versions held")
        listed = subprocess.run(
            [str(site.bin / "edge-kombu"), "workers", "--db",
             site.env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]],
            capture_output=True, text=True, env=site.environ(), timeout=60).stdout
        assert f"{BUNDLE}@{resolved['version'][:20]}" in listed, listed
        print(f"\nbundle timings: {timings}")
        (site.dags / "big.bin").unlink()
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{site.logs()}") from None



PINNED_DAG = '''
from __future__ import annotations

import os
import time

import pendulum
from airflow.sdk import dag, task

CODE_VERSION = "{marker}"
RELEASE = "{release}"


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def edge_pinned():
    @task
    def wait_for_release():
        deadline = time.monotonic() + 120  # bounded: the test releases it in seconds
        while not os.path.exists(RELEASE) and time.monotonic() < deadline:
            time.sleep(0.1)

    @task
    def which_code():
        return CODE_VERSION

    wait_for_release() >> which_code()


edge_pinned()
'''


def _commit(repo: Path, source: str) -> str:
    (repo / "edge_pinned.py").write_text(source)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "add", "-A"], check=True, capture_output=True)
    subprocess.run([*git, "commit", "-qm", "dag"], check=True, capture_output=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def _ti_state(site: AirflowSite, dag_id: str, run_id: str, task_id: str) -> str | None:
    answer = site.rest("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}")
    return answer.json().get("state") if answer.status_code == 200 else None


@pytest.mark.timeout(300)
def test_runs_keep_their_bundle_version_across_a_commit(bundle_site):
    """A versioned bundle (a git repository at the centre): a run started before a commit
    finishes on the old code, one started after it uses the new code; each version is
    downloaded once by the worker, which has neither the repository nor DAG files."""
    site, repo, release, old = (bundle_site.site, bundle_site.repo, bundle_site.release,
                                bundle_site.old)
    dag_id = "edge_pinned"
    try:
        site.wait_for_dag(dag_id)
        _trigger(site, dag_id, "before")
        wait_for(lambda: _ti_state(site, dag_id, "before", "wait_for_release") == "running",
                 timeout=60, interval=0.2, message="the first run's task started")
        new = _commit(repo, PINNED_DAG.format(marker="new", release=release))
        wait_for(lambda: site.rest("GET", f"/dags/{dag_id}").json().get("bundle_version") == new,
                 timeout=60, interval=0.2, message="the commit parsed at the centre")
        _trigger(site, dag_id, "after")
        wait_for(lambda: _ti_state(site, dag_id, "after", "wait_for_release") == "running",
                 timeout=60, interval=0.2, message="the second run's task started")
        release.touch()
        assert site.wait_for_dag_run(dag_id, "before") == "success"
        assert site.wait_for_dag_run(dag_id, "after") == "success"

        runs = {run: site.rest("GET", f"/dags/{dag_id}/dagRuns/{run}").json()["bundle_version"]
                for run in ("before", "after")}
        assert runs == {"before": old, "after": new}
        assert site.xcom(dag_id, "before", "which_code") == "old"
        assert site.xcom(dag_id, "after", "which_code") == "new"
        assert _versions(bundle_site.worker_cache, "git-dags") == sorted([old, new])
        logs = [path.read_text() for path in (site.home / "logs").glob(
            f"dag_id={dag_id}/**/*.log")]
        assert len(logs) == 4
        assert sum("downloaded" in text for text in logs) == 2  # once per version
        assert list(bundle_site.empty.iterdir()) == []
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{site.logs()}") from None
