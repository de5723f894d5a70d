"""Issue 12, fault 6 with an Airflow workload: an edge worker cut off from the edge API for
longer than the lease. The server gives its message to another worker, which the task
instance's guard refuses (it already runs); the first run finishes, and the task instance
succeeds once, in its first try."""

from __future__ import annotations

from tests.airflow.site import AirflowSite
from tests.faults import TcpProxy
from tests.helpers import wait_for

#: Short lease and worker timeout, so the partition outlasts them quickly; heartbeats and
#: long-polls well within them.
FAST = {
    "EDGE_KOMBU_LEASE_TIMEOUT": "4",
    "EDGE_KOMBU_WORKER_TIMEOUT": "4",
    "EDGE_KOMBU_MAX_WAIT": "2",
    "EDGE_KOMBU_REAP_INTERVAL": "0.5",
    "AIRFLOW__EDGE__HEARTBEAT_INTERVAL": "1",
}

DAG = '''
from __future__ import annotations

import os
import time

import pendulum
from airflow.sdk import dag, task


@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def cut_off():
    @task
    def held() -> str:
        with open({runs!r}, "a") as fh:  # one line per execution of the task's code
            fh.write(os.environ.get("EDGE_SITE", "?") + "\\n")
        deadline = time.monotonic() + 180
        while not os.path.exists({release!r}) and time.monotonic() < deadline:
            time.sleep(0.2)
        return os.environ.get("EDGE_SITE", "?")

    held()


cut_off()
'''


def test_a_task_cut_off_longer_than_the_lease_succeeds_once(tmp_path):
    runs, release = tmp_path / "runs", tmp_path / "release"
    site = AirflowSite(tmp_path)
    site.env.update(FAST)
    site.add_dag("cut_off.py", DAG.format(runs=str(runs), release=str(release)))
    proxy = None
    try:
        site.start_central()
        proxy = TcpProxy(site.port)
        far = site.start_edge_worker("far", EDGE_SITE="far",
                                     AIRFLOW__EDGE__API_URL=f"http://127.0.0.1:{proxy.port}/edge")
        site.wait_for_dag("cut_off")
        site.airflow("dags", "trigger", "cut_off", "--run-id", "cut_1")
        wait_for(lambda: runs.exists(), timeout=120, message="the task started on 'far'")

        proxy.partition(reset=True)  # 'far' keeps running the task, cut off from the edge API
        near = site.start_edge_worker("near", EDGE_SITE="near")
        wait_for(lambda: "already runs elsewhere; ignoring this delivery" in near.log(),
                 timeout=90, message="the redelivered workload refused on 'near'")
        proxy.heal()
        release.touch()

        assert site.wait_for_dag_run("cut_off", "cut_1") == "success", site.logs()
        (ti,) = site.task_instances("cut_off", "cut_1")
        assert (ti["state"], ti["try_number"]) == ("success", 1)
        assert runs.read_text().split() == ["far"], "the task's code ran once, on 'far'"
        assert site.xcom("cut_off", "cut_1", "held") == "far"
        # The server had given the message to 'near': the late ack of 'far' settled nothing.
        wait_for(lambda: "had no effect" in far.log(), timeout=30,
                 message="the late ack of 'far' refused")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{site.logs()}") from None
    finally:
        release.touch()
        site.stop()
        if proxy is not None:
            proxy.stop()
