"""The README's first command: `edge-kombu demo` runs the API, a worker and tasks, then stops."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import BIN, ROOT

pytestmark = [pytest.mark.timeout(180), pytest.mark.sqlite_only]


def test_demo_runs_tasks_and_leaves_nothing_running(tmp_path):
    env = {"HOME": str(tmp_path), "PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(BIN / "edge-kombu"), "demo", "--celery"], env=env,
                          capture_output=True, text=True, timeout=150, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "add(2, 3) = 5" in done.stdout
    assert "chord total = 15" in done.stdout
    assert (tmp_path / "airflow" / "edge_kombu.db").exists()  # the embedded default
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "the demo left processes running"
