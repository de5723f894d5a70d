"""``airflow db migrate`` creates and upgrades the edge tables (Airflow's external DB managers)."""

from __future__ import annotations

import sqlite3
import subprocess

from alembic.script import ScriptDirectory

from edge_kombu.server import models
from edge_kombu.server.db import alembic_config
from edge_kombu.server.sql import create_db_engine
from tests.helpers import BIN

EDGE_TABLES = {*models.metadata.tables, models.VERSION_TABLE}


def _head() -> str:
    engine = create_db_engine("sqlite://")
    try:
        return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    finally:
        engine.dispose()


def _edge_state(db_path) -> tuple[set[str], list[str]]:
    with sqlite3.connect(db_path) as conn:
        tables = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'edge_kombu_%'")}
        versions = ([row[0] for row in conn.execute(
            f"SELECT version_num FROM {models.VERSION_TABLE}")]
            if models.VERSION_TABLE in tables else [])
    return tables, versions


def test_airflow_db_migrate_creates_then_upgrades_the_edge_tables(site):
    site.airflow("db", "migrate")
    assert _edge_state(site.db_path) == (EDGE_TABLES, [_head()])
    with sqlite3.connect(site.db_path) as conn:  # Airflow's own tables are there too
        assert conn.execute("SELECT count(*) FROM dag").fetchone() == (0,)

    again = site.airflow("db", "migrate")  # an existing database: the upgrade path
    assert "Migrating the edge tables" in again.stdout + again.stderr
    assert _edge_state(site.db_path) == (EDGE_TABLES, [_head()])
    site.airflow("db", "check-migrations", "-t", "0")


def test_edge_kombu_db_migrate_first_then_airflow(site):
    url = f"sqlite:///{site.db_path}"
    subprocess.run([str(BIN / "edge-kombu"), "db", "migrate", "--db", url], check=True,
                   capture_output=True, env=site.environ())
    site.airflow("db", "migrate")
    assert _edge_state(site.db_path) == (EDGE_TABLES, [_head()])


def test_airflow_db_reset_recreates_the_edge_tables(site):
    site.airflow("db", "migrate")
    with sqlite3.connect(site.db_path) as conn:
        conn.execute("INSERT INTO edge_kombu_token (name, kind, token_hash, created_at) "
                     "VALUES ('w1', 'worker', 'x', 0)")
    site.airflow("db", "reset", "--yes")
    assert _edge_state(site.db_path) == (EDGE_TABLES, [_head()])
    with sqlite3.connect(site.db_path) as conn:
        assert conn.execute("SELECT count(*) FROM edge_kombu_token").fetchone() == (0,)
