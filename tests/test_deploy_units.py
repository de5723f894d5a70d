"""The systemd units of deploy/systemd: ``systemd-analyze verify`` accepts them (with the
binaries pointed at this installation's, which exist), their stop behaviour and hardening
are what docs/deploy.md says, and the API unit's command serves and stops as systemd
would run it (the worker unit's: tests/worker/test_systemd_unit.py)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.helpers import BIN, ROOT, Process, free_port, wait_for
from tests.systemd_units import INSTALLED, UNITS, directives, expand, unit_environment

pytestmark = pytest.mark.sqlite_only

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def verify(*units: Path) -> tuple[int, str]:
    result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units)],
                            capture_output=True, text=True, timeout=60)
    return result.returncode, (result.stdout + result.stderr).strip()


@pytest.fixture
def rendered(tmp_path) -> dict[str, Path]:
    """The units with ``/opt/edge-kombu/bin`` replaced by this installation's bin directory
    (verify insists that ExecStart's program exists)."""
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.skip("systemd-analyze is not installed")
    units = {}
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text()
        assert INSTALLED in text, f"{unit.name}: expected the programs under {INSTALLED}"
        (tmp_path / unit.name).write_text(text.replace(INSTALLED, f"{BIN}/"))
        units[unit.name] = tmp_path / unit.name
    assert set(units) == {"edge-kombu-api.service", "edge-kombu-worker@.service"}
    return units


def test_systemd_analyze_verify_accepts_the_units(rendered):
    rc, output = verify(*rendered.values())
    # verify exits 0 on settings it ignores: any line it prints is a failure here.
    assert rc == 0 and output == "", output


def test_verify_catches_a_broken_unit(rendered, tmp_path):
    """The check above can fail: a unit with a setting systemd cannot parse is reported."""
    broken = tmp_path / "broken@.service"
    broken.write_text(rendered["edge-kombu-worker@.service"].read_text()
                      .replace("KillMode=mixed", "KillMode=gently"))
    rc, output = verify(broken)
    assert "kill mode" in output.lower(), output


def test_units_stop_by_draining_and_are_hardened():
    for name in ("edge-kombu-api.service", "edge-kombu-worker@.service"):
        unit = directives(UNITS / name)
        assert unit["KillMode"] == ["mixed"], name
        assert unit["NoNewPrivileges"] == ["yes"], name
        assert unit["ProtectSystem"] == ["strict"], name
        assert unit["User"] == ["edge-kombu"], name
        assert unit["EnvironmentFile"], name
        assert unit["ReadWritePaths"], name
        assert not any("TOKEN" in v or "SECRET" in v for v in unit.get("Environment", [])), \
            f"{name}: credentials belong in the EnvironmentFile"

    worker = directives(UNITS / "edge-kombu-worker@.service")
    [stop] = worker["ExecStop"]
    assert re.search(r"celery -A edge_kombu edge stop --wait -n %i --drain-timeout "
                     r"\$\{EDGE_KOMBU_DRAIN_TIMEOUT\}", stop), stop
    assert "-n %i@%H" in worker["ExecStart"][0]
    env = dict(value.split("=", 1) for value in worker["Environment"])
    drain = float(env["EDGE_KOMBU_DRAIN_TIMEOUT"])
    [timeout] = worker["TimeoutStopSec"]
    # The stop timeout covers the drain and Celery's warm shutdown after it.
    assert float(timeout) >= drain + 30, (timeout, drain)
    # Each worker its own control-socket directory, which `edge stop` finds by the same
    # environment.
    assert env["EDGE_KOMBU_RUN_DIR"] == "/run/edge-kombu-worker/%i"
    assert worker["RuntimeDirectory"] == ["edge-kombu-worker/%i"]

    api = directives(UNITS / "edge-kombu-api.service")
    assert "edge-kombu api" in api["ExecStart"][0]


def test_sysusers_creates_the_units_user():
    line = next(line for line in (UNITS / "edge-kombu.sysusers.conf").read_text().splitlines()
                if line and not line.startswith("#"))
    assert line.split()[:2] == ["u", "edge-kombu"]


def test_api_unit_serves_and_stops_on_sigterm(db_url, tmp_path):
    """ExecStart as systemd runs it (defaults, then an environment file with the database
    and the bind address) serves the API; SIGTERM to the main process only (KillMode=mixed)
    stops gunicorn and its processes within TimeoutStopSec."""
    unit_file = UNITS / "edge-kombu-api.service"
    unit = directives(unit_file)
    port = free_port()
    env = unit_environment(unit_file, None, {
        "EDGE_KOMBU_DB_URL": db_url, "EDGE_KOMBU_BIND": f"127.0.0.1:{port}"},
        tmp_path, {"AIRFLOW_HOME": "state", "HOME": "state"})
    [command] = unit["ExecStart"]
    server = Process(expand(command, None, env), tmp_path / "unit-api.log")
    server.env = {**{k: v for k, v in os.environ.items()
                     if not k.startswith(("AIRFLOW__", "EDGE_KOMBU_"))},
                  **env, "PYTHONPATH": str(ROOT)}
    server.start()
    try:
        def healthy() -> bool:
            assert server.alive(), server.log()[-3000:]
            return requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2).ok

        wait_for(healthy, timeout=60, message="the unit's API server")
        children = psutil.Process(server.pid).children(recursive=True)
        assert len(children) == int(env["EDGE_KOMBU_API_WORKERS"]), children
        stopping = time.monotonic()
        os.kill(server.pid, signal.SIGTERM)  # KillMode=mixed: the main process only
        server.proc.wait(float(unit["TimeoutStopSec"][0]))
        took = time.monotonic() - stopping
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log()[-3000:]
    assert not any(child.is_running() and child.status() != psutil.STATUS_ZOMBIE
                   for child in children), "gunicorn's processes outlived the stop"
    print(f"the API unit stopped {took:.1f} s after SIGTERM")


def test_environment_file_examples_name_real_settings():
    """Each variable of the example environment files is a setting edge-kombu reads (its
    name in the code, or an ``[edge]`` option of the provider) or one the unit's own
    command lines use: a misspelt one would be ignored without a word."""
    from edge_kombu.airflow.provider import get_provider_info

    source = "\n".join(p.read_text() for p in (ROOT / "edge_kombu").rglob("*.py"))
    edge_options = set(get_provider_info()["config"]["edge"]["options"])
    for example, unit in (("api.env.example", "edge-kombu-api.service"),
                          ("worker.env.example", "edge-kombu-worker@.service")):
        commands = " ".join(" ".join(values) for key, values in directives(UNITS / unit).items()
                            if key in ("ExecStart", "ExecStop"))
        lines = (UNITS / example).read_text().splitlines()
        names = [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]
        assert names, example
        for name in names:
            if name.startswith("AIRFLOW__EDGE__"):
                assert name.removeprefix("AIRFLOW__EDGE__").lower() in edge_options, name
            else:
                assert f'"{name}"' in source or f"${{{name}}}" in commands, (example, name)
