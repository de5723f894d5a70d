"""``airflow db migrate`` creates and upgrades the edge tables.

:class:`EdgeDBManager` is one of Airflow's external DB managers. The provider declares
it (``db-managers`` in its provider info), so Airflow runs it with its own migrations
without any setting; on Airflow versions that do not read providers' DB managers, add
it to ``[database] external_db_managers``::

    [database]
    external_db_managers = edge_kombu.airflow.db_manager.EdgeDBManager

The migrations are the ones of ``edge-kombu db migrate`` (``edge_kombu/server/migrations``,
version table ``edge_kombu_alembic_version``), run the same way, so both commands leave
the same schema. ``airflow db reset`` drops the edge tables too.
"""

from __future__ import annotations

from pathlib import Path

from airflow.utils.db_manager import BaseDBManager
from sqlalchemy.engine import Engine

from edge_kombu.server import db, models
from edge_kombu.server.db import alembic_config, migrate
from edge_kombu.server.sql import create_db_engine


class EdgeDBManager(BaseDBManager):
    """The edge tables in Airflow's metadata database."""

    metadata = models.metadata
    migration_dir = str(Path(db.__file__).with_name("migrations"))
    alembic_file = ""  # no alembic.ini: get_alembic_config builds the configuration
    version_table_name = models.VERSION_TABLE
    supports_table_dropping = True

    def _engine(self) -> Engine:
        url = self.session.get_bind().engine.url.render_as_string(hide_password=False)
        return create_db_engine(url, pool_size=1)

    def get_alembic_config(self):
        return alembic_config(self.session.get_bind().engine)

    def create_db_from_orm(self) -> None:
        # Always through the migrations, as `edge-kombu db migrate` does.
        self.upgradedb()

    def initdb(self, use_migration_files: bool = False) -> None:
        self.upgradedb()

    def upgradedb(self, to_revision: str | None = None, from_revision: str | None = None,
                  show_sql_only: bool = False, use_migration_files: bool = False) -> None:
        if show_sql_only:
            raise NotImplementedError("the edge tables have no offline (SQL only) migration")
        self.log.info("Migrating the edge tables")
        self._release_metadata_locks_if_needed()
        engine = self._engine()
        try:
            migrate(engine, to_revision or "heads")
        finally:
            engine.dispose()

    def downgrade(self, to_revision: str, from_revision: str | None = None,
                  show_sql_only: bool = False) -> None:
        from alembic import command

        if show_sql_only:
            raise NotImplementedError("the edge tables have no offline (SQL only) migration")
        engine = self._engine()
        try:
            command.downgrade(alembic_config(engine), to_revision)
        finally:
            engine.dispose()
