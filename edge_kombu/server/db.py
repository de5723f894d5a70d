"""Which database the edge API uses, and schema migration (the engine: :mod:`.sql`).

Resolution order of the database URL: the ``--db`` option or ``EDGE_KOMBU_DB_URL``;
else Airflow's ``[database] sql_alchemy_conn`` when Airflow is installed and
configured; else a SQLite file ``edge_kombu.db`` under ``$AIRFLOW_HOME``
(default ``~/airflow``): the embedded default.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from sqlalchemy.engine import Engine, make_url

log = logging.getLogger(__name__)

ENV_DB_URL = "EDGE_KOMBU_DB_URL"
SQLITE_FILENAME = "edge_kombu.db"
_MIGRATIONS = Path(__file__).with_name("migrations")

# Bare dialect names mapped to the driver edge-kombu installs for them.
_DEFAULT_DRIVERS = {
    "postgresql": "postgresql+psycopg2",
    "postgres": "postgresql+psycopg2",
    "mysql": "mysql+pymysql",
    "mariadb": "mariadb+pymysql",
}


def airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")


def airflow_conf():
    """Airflow's configuration, if Airflow is installed and configured; else None.

    Importing Airflow writes a default ``airflow.cfg``, so it is only imported when
    an ``airflow.cfg`` exists already or ``AIRFLOW__*`` variables are set.
    """
    configured = (airflow_home() / "airflow.cfg").exists() or any(
        key.startswith("AIRFLOW__") for key in os.environ
    )
    if not configured:
        return None
    try:
        from airflow.configuration import conf
    except ImportError:
        return None
    return conf


def _airflow_sql_alchemy_conn() -> str | None:
    conf = airflow_conf()
    if conf is None:
        return None
    return conf.get("database", "sql_alchemy_conn", fallback=None) or None


def resolve_db_url(explicit: str | None = None) -> str:
    """Return the database URL to use (see the module docstring for the order)."""
    return resolve_db(explicit)[0]


def resolve_db(explicit: str | None = None) -> tuple[str, Path | None]:
    """The database URL to use and, when it is the embedded default, the SQLite file it
    names (commands say so: a token created there is not seen by an API on another one)."""
    url = explicit or os.environ.get(ENV_DB_URL) or _airflow_sql_alchemy_conn()
    if url:
        return normalize_url(url), None
    home = airflow_home()
    home.mkdir(parents=True, exist_ok=True)
    path = home / SQLITE_FILENAME
    return normalize_url(f"sqlite:///{path}"), path


def normalize_url(url: str) -> str:
    """Name the installed driver for bare ``postgresql://`` / ``mysql://`` URLs."""
    parsed = make_url(url)
    driver = _DEFAULT_DRIVERS.get(parsed.drivername)
    if driver:
        parsed = parsed.set(drivername=driver)
    return parsed.render_as_string(hide_password=False)


def alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection_engine"] = engine
    return cfg


def migrate(engine: Engine, revision: str = "heads") -> None:
    """Create or upgrade the edge tables to ``revision`` through Alembic."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from edge_kombu.server.models import VERSION_TABLE

    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return ctx.get_current_revision()


class DatabaseNotReady(Exception):
    """The database cannot serve the edge commands; the message says what to do."""


def reachable_revision(engine: Engine, url: str) -> str | None:
    """The edge tables' revision (None: not created); :class:`DatabaseNotReady` with one
    line if the database does not answer."""
    try:
        return current_revision(engine)
    except Exception as exc:  # noqa: BLE001 - any connection failure, in one line
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise DatabaseNotReady(
            f"cannot connect to the database {describe(url)}: {type(exc).__name__}: {reason}"
        ) from None


def check_schema(engine: Engine, url: str) -> None:
    """Raise :class:`DatabaseNotReady` with one line unless the database answers and its
    edge tables are at this edge-kombu's revision."""
    revision = reachable_revision(engine, url)
    if revision is None:
        raise DatabaseNotReady(
            f"the edge tables do not exist in {describe(url)}; run: edge-kombu db migrate"
        )
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(engine))
    heads = script.get_heads()
    if revision in heads:
        return
    known = {rev.revision for rev in script.walk_revisions()}
    if revision in known:
        raise DatabaseNotReady(
            f"the edge tables in {describe(url)} are at revision {revision}, older than this "
            f"edge-kombu's {', '.join(heads)}; run: edge-kombu db migrate"
        )
    raise DatabaseNotReady(
        f"the edge tables in {describe(url)} are at revision {revision}, which this "
        "edge-kombu does not know (a newer one migrated them): upgrade edge-kombu"
    )


def describe(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)
