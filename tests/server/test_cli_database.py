"""Every ``edge-kombu`` command finds the same database the same way and says what is
wrong with it in one line: the real command as processes, on the database under test."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from edge_kombu.server.db import migrate
from edge_kombu.server.sql import create_db_engine
from tests.conftest import scratch_database
from tests.helpers import BIN, ROOT

#: One command of each kind that reads or writes the database.
COMMANDS = [
    ["api", "--bind", "127.0.0.1:0"],
    ["token", "create", "--central", "scheduler"],
    ["token", "list"],
    ["token", "revoke", "scheduler"],
    ["workers"],
    ["queues"],
    ["jobs"],
    ["audit"],
    ["worker", "maintenance", "alpha", "on", "--comments", "swap"],
    ["worker", "remove", "alpha"],
]


def run(*args: str, env: dict | None = None, home: Path | None = None
        ) -> subprocess.CompletedProcess:
    """``edge-kombu ARGS`` as a user runs it: no Airflow settings, AIRFLOW_HOME ``home``."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("AIRFLOW__") and k != "EDGE_KOMBU_DB_URL"}
    if home is not None:
        clean["AIRFLOW_HOME"] = str(home)
    clean.update(env or {}, PYTHONPATH=str(ROOT))
    return subprocess.run([str(BIN / "edge-kombu"), *args], capture_output=True, text=True,
                          timeout=120, env=clean, cwd=ROOT)


def one_error(done: subprocess.CompletedProcess) -> str:
    """The only line of a refused command (exit 1, nothing on stdout, no traceback)."""
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


@contextlib.contextmanager
def empty_database(tmp_path: Path):
    """A database of the kind under test without the edge tables."""
    server = os.environ.get("EDGE_KOMBU_TEST_DB", "sqlite")
    if server == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    with scratch_database(server) as url:
        yield url


def shown(url: str) -> str:
    from edge_kombu.server.db import describe

    return describe(url)


def test_every_command_on_an_unmigrated_database_says_run_db_migrate(tmp_path):
    with empty_database(tmp_path) as url:
        expected = (f"Error: the edge tables do not exist in {shown(url)}; "
                    "run: edge-kombu db migrate")
        for command in COMMANDS:
            assert one_error(run(*command, "--db", url)) == expected, command
        # The variable is the same database as --db.
        assert one_error(run("workers", env={"EDGE_KOMBU_DB_URL": url})) == expected

        engine = create_db_engine(url, pool_size=1)
        try:
            migrate(engine, "0006")  # a schema an older edge-kombu left
            older = one_error(run("token", "list", "--db", url))
            assert "are at revision 0006, older than this edge-kombu's" in older
            assert older.endswith("; run: edge-kombu db migrate")
        finally:
            engine.dispose()
        done = run("db", "migrate", env={"EDGE_KOMBU_DB_URL": url})
        assert done.returncode == 0, done.stderr
        assert shown(url) in done.stdout


def test_the_variable_names_the_database_of_every_command(db_url):
    env = {"EDGE_KOMBU_DB_URL": db_url}
    created = run("token", "create", "--central", "scheduler", env=env)
    assert created.returncode == 0, created.stderr
    assert created.stderr == ""  # no notice: the database was chosen
    listed = run("token", "list", "--db", db_url)
    assert "scheduler" in listed.stdout


@pytest.mark.sqlite_only
def test_the_default_sqlite_file_is_named(tmp_path):
    home = tmp_path / "home"
    default = home / "edge_kombu.db"
    unmigrated = one_error(run("token", "create", "--central", "x", home=home))
    assert str(default) in unmigrated and "edge-kombu db migrate" in unmigrated
    migrated = run("db", "migrate", home=home)
    assert migrated.returncode == 0 and str(default) in migrated.stdout
    created = run("token", "create", "--central", "x", home=home)
    assert created.returncode == 0, created.stderr
    assert created.stderr.strip() == (f"using the default database {default} (set "
                                      "EDGE_KOMBU_DB_URL or --db to choose another)")
    assert len(created.stdout.strip().splitlines()) == 1  # the token alone on stdout


@pytest.mark.sqlite_only
def test_an_unreachable_database_is_one_line(tmp_path):
    url = "postgresql+psycopg2://nobody@127.0.0.1:1/nothing"
    for command in (["token", "create", "--central", "x"], ["db", "migrate"], ["workers"]):
        line = one_error(run(*command, "--db", url))
        assert line.startswith(f"Error: cannot connect to the database {url}: "
                               "OperationalError: "), line


@pytest.mark.sqlite_only
def test_help_shows_defaults_and_choices():
    api_help = " ".join(run("api", "--help").stdout.split())
    assert "(default: $EDGE_KOMBU_LEASE_TIMEOUT, else 30)" in api_help
    assert "(default: $EDGE_KOMBU_MAX_WAIT, else 10)" in api_help
    wrong = run("workers", "--state", "sleeping")
    assert wrong.returncode == 2
    assert "'idle'" in wrong.stderr and "'maintenance request'" in wrong.stderr
