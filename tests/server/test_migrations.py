"""The Alembic migrations build exactly the tables of ``models``, on every database.

The fixtures migrate the database under test (``EDGE_KOMBU_TEST_DB``); Alembic's
autogenerate comparison then must find nothing to change.
"""

from __future__ import annotations

import subprocess

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from edge_kombu.server import models
from edge_kombu.server.db import alembic_config, current_revision, describe, normalize_url
from edge_kombu.server.sql import create_db_engine
from tests.helpers import BIN, ROOT


def _ours(name, type_, *_args) -> bool:
    """Compare only the edge tables (the database may hold Airflow's too)."""
    return type_ != "table" or (name or "").startswith("edge_kombu_")


def _head(engine) -> str:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


@pytest.fixture
def engine(db_url):
    engine = create_db_engine(db_url, pool_size=1)
    yield engine
    engine.dispose()


def test_migrated_schema_matches_the_models(engine):
    assert current_revision(engine) == _head(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={
            "version_table": models.VERSION_TABLE,
            "compare_type": True,
            "compare_server_default": True,
            "include_name": _ours,
        })
        differences = compare_metadata(context, models.metadata)
    assert differences == []


def _migrate(url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "edge-kombu"), "db", "migrate", "--db", url],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )


def _check_migrate(url: str, head: str) -> None:
    for _ in range(2):
        done = _migrate(url)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"edge tables at revision {head} in {describe(url)}"
        assert "Traceback" not in done.stderr


def test_db_migrate_command_is_idempotent(engine, db_url):
    _check_migrate(normalize_url(db_url), _head(engine))
    assert current_revision(engine) == _head(engine)


def test_db_migrate_command_creates_a_new_database(engine, tmp_path):
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    _check_migrate(url, _head(engine))
    fresh = create_db_engine(url)
    try:
        assert current_revision(fresh) == _head(engine)
    finally:
        fresh.dispose()
