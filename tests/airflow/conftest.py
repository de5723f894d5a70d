"""Airflow tests: real Airflow components (CLI, api-server, scheduler, dag-processor) on a
temporary AIRFLOW_HOME with SQLite, and real edge workers.

They run only where Airflow is installed (``tox -e airflow``); elsewhere they are skipped.
Tests that use Airflow in this process get a private AIRFLOW_HOME set before Airflow is
first imported (no test module imports Airflow at the top).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.airflow.site import AirflowSite

AIRFLOW_INSTALLED = importlib.util.find_spec("airflow") is not None
HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    if AIRFLOW_INSTALLED:
        return
    skip = pytest.mark.skip(reason="Airflow is not installed (run: tox -e airflow)")
    for item in items:
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def airflow_in_process(tmp_path_factory):
    """Configure Airflow for this process (own home, SQLite, no examples); yield the home."""
    home = tmp_path_factory.mktemp("airflow_home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_HOME", str(home))
        patch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
        patch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
        patch.setenv("AIRFLOW__CORE__EXECUTOR", "edge_kombu.airflow.EdgeExecutor")
        yield home


@pytest.fixture
def site(tmp_path):
    """An Airflow site whose processes are stopped (by PID) after the test."""
    airflow_site = AirflowSite(tmp_path)
    yield airflow_site
    airflow_site.stop()
