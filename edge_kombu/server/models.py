"""Tables of the edge API, on a private ``MetaData`` so they never mix with Airflow's.

Times are UNIX epoch seconds (float) written by the API servers, which keeps the
arithmetic of leases and expiries identical on SQLite, PostgreSQL and MySQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Double,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

from edge_kombu.protocol import MAX_ID_LENGTH, MAX_KEY_LENGTH, MAX_NAME_LENGTH

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

#: Alembic's version table for our migrations, apart from Airflow's own.
VERSION_TABLE = "edge_kombu_alembic_version"

_ID = BigInteger().with_variant(Integer(), "sqlite")
_NAME = String(MAX_NAME_LENGTH)
_LONG_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
_LONG_BLOB = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")

exchange = Table(
    "edge_kombu_exchange",
    metadata,
    Column("name", _NAME, primary_key=True),
    Column("type", String(16), nullable=False),
    Column("durable", Boolean, nullable=False, default=True),
    Column("auto_delete", Boolean, nullable=False, default=False),
    Column("arguments", Text, nullable=True),
)

binding = Table(
    "edge_kombu_binding",
    metadata,
    # sha1 of (exchange, queue, routing key): a unique key short enough for MySQL.
    Column("id", String(40), primary_key=True),
    Column("exchange", _NAME, nullable=False, index=True),
    Column("queue", _NAME, nullable=False, index=True),
    Column("routing_key", _NAME, nullable=False),
)

queue = Table(
    "edge_kombu_queue",
    metadata,
    Column("name", _NAME, primary_key=True),
    Column("durable", Boolean, nullable=False, default=True),
    Column("auto_delete", Boolean, nullable=False, default=False),
    Column("exclusive", Boolean, nullable=False, default=False),
    Column("expires_ms", BigInteger, nullable=True),
    Column("message_ttl_ms", BigInteger, nullable=True),
    Column("created_at", Double, nullable=False),
    Column("last_used_at", Double, nullable=False),
    # The worker credential that declared a private queue (reply, event): only it may use it.
    Column("owner", _NAME, nullable=True),
)

message = Table(
    "edge_kombu_message",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("queue", _NAME, nullable=False),
    Column("priority", Integer, nullable=False, default=0),
    Column("slots", Integer, nullable=False, default=1),
    Column("payload", _LONG_TEXT, nullable=False),
    Column("published_at", Double, nullable=False),
    Column("expires_at", Double, nullable=True),
    Column("redelivered", Boolean, nullable=False, default=False),
    # Lease: the consumer session holding the message, and the nonce of this delivery.
    Column("session", String(64), nullable=True),
    Column("lease_nonce", String(16), nullable=True),
    Column("leased_at", Double, nullable=True),
    Index("ix_edge_kombu_message_claim", "queue", "session", "priority", "id"),
    Index("ix_edge_kombu_message_session", "session"),
    Index("ix_edge_kombu_message_expires_at", "expires_at"),
)

session = Table(
    "edge_kombu_session",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("principal", _NAME, nullable=False),
    Column("opened_at", Double, nullable=False),
    Column("last_seen", Double, nullable=False, index=True),
    Column("closed_at", Double, nullable=True, index=True),
)

consumer = Table(
    "edge_kombu_consumer",
    metadata,
    Column("session", String(64), primary_key=True),
    Column("queue", _NAME, primary_key=True, index=True),
)

result = Table(
    "edge_kombu_result",
    metadata,
    Column("key", String(MAX_KEY_LENGTH), primary_key=True),
    Column("value", _LONG_BLOB, nullable=False),
    Column("updated_at", Double, nullable=False),
    Column("expires_at", Double, nullable=True, index=True),
)

# Credentials and their scope. ``name`` is a worker name or pattern (kind "worker") or any
# name (kind "central"); a row without a hash issues no bearer token and only gives its
# scope to shared-secret or OIDC JWTs of the workers it names.
token = Table(
    "edge_kombu_token",
    metadata,
    Column("name", _NAME, primary_key=True),
    Column("token_hash", String(64), nullable=True, unique=True),
    Column("created_at", Double, nullable=False),
    Column("kind", String(16), nullable=False, default="worker"),
    Column("queues", Text, nullable=True),  # JSON list: may consume (and publish to)
    Column("publish", Text, nullable=True),  # JSON list: may also publish to
    Column("expires_at", Double, nullable=True),
    Column("last_used_at", Double, nullable=True),
)

# Which worker credential was handed which task (at claim), with the task's group: what
# a worker credential may read and write of results and task logs.
task_grant = Table(
    "edge_kombu_task_grant",
    metadata,
    Column("task_id", String(MAX_KEY_LENGTH), primary_key=True),
    Column("principal", _NAME, primary_key=True),
    Column("group_id", String(MAX_KEY_LENGTH), nullable=True),
    Column("granted_at", Double, nullable=False, index=True),
    Index("ix_edge_kombu_task_grant_group", "group_id", "principal"),
)

worker = Table(
    "edge_kombu_worker",
    metadata,
    Column("name", _NAME, primary_key=True),
    Column("instance", String(64), nullable=False),
    Column("state", String(32), nullable=False, index=True),
    Column("queues", Text, nullable=False),  # JSON list, as last reported
    Column("slots_total", Integer, nullable=False, default=1),
    Column("slots_used", Integer, nullable=False, default=0),
    Column("running", _LONG_TEXT, nullable=False),  # JSON list of running tasks
    Column("sysinfo", Text, nullable=False),  # JSON: CPU, memory, disk, load
    Column("versions", Text, nullable=False),  # JSON: edge_kombu, celery, python, airflow
    Column("version_warning", String(512), nullable=True),
    Column("session", String(64), nullable=True),  # its consumer session (leases)
    Column("first_online", Double, nullable=False),
    Column("last_heartbeat", Double, nullable=False, index=True),
    # What the admins (or the worker's own local command) asked for:
    Column("maintenance", Boolean, nullable=False, default=False),
    Column("maintenance_comment", String(1024), nullable=True),
    Column("maintenance_changed_at", Double, nullable=True),
    Column("shutdown_requested", Boolean, nullable=False, default=False),
    Column("desired_queues", Text, nullable=True),  # JSON list; None = as the worker says
    Column("desired_concurrency", Integer, nullable=True),
)
# Claims name the worker of a consumer session (jobs history).
Index("ix_edge_kombu_worker_session", worker.c.session)

# Task logs pushed by edge workers while their tasks run (no shared disk needed): one row
# per log (a task instance try) holding its length, and its text in chunks by byte offset.
task_log = Table(
    "edge_kombu_task_log",
    metadata,
    # sha1 of the task instance try's coordinates: a short unique key, also for MySQL.
    Column("key", String(40), primary_key=True),
    Column("dag_id", String(MAX_ID_LENGTH), nullable=False),
    Column("task_id", String(MAX_ID_LENGTH), nullable=False),
    Column("run_id", String(MAX_ID_LENGTH), nullable=False),
    Column("map_index", Integer, nullable=False),
    Column("try_number", Integer, nullable=False),
    Column("ti_id", String(36), nullable=True),
    Column("length", BigInteger, nullable=False, default=0),  # UTF-8 bytes stored so far
    Column("updated_at", Double, nullable=False, index=True),
)

task_log_chunk = Table(
    "edge_kombu_task_log_chunk",
    metadata,
    Column("key", String(40), primary_key=True),
    Column("start", BigInteger, primary_key=True, autoincrement=False),  # its byte offset
    Column("length", Integer, nullable=False),  # UTF-8 bytes of data
    Column("data", _LONG_TEXT, nullable=False),
)

job = Table(
    "edge_kombu_job",
    metadata,
    # Keyset pagination runs on seq (newest first); task ids are not ordered.
    Column("seq", _ID, primary_key=True, autoincrement=True),
    Column("task_id", String(MAX_KEY_LENGTH), nullable=False, unique=True),
    Column("name", _NAME, nullable=False),
    Column("queue", _NAME, nullable=False),
    Column("slots", Integer, nullable=False, default=1),
    Column("state", String(16), nullable=False),
    Column("worker", _NAME, nullable=True),
    Column("message_id", BigInteger, nullable=True, index=True),  # to settle on ack
    Column("queued_at", Double, nullable=False),
    Column("received_at", Double, nullable=True),
    Column("started_at", Double, nullable=True),
    Column("finished_at", Double, nullable=True, index=True),
    # Airflow workloads: the task instance the workload runs.
    Column("dag_id", String(250), nullable=True),
    Column("ti_task_id", String(250), nullable=True),
    Column("run_id", String(250), nullable=True),
    Column("map_index", Integer, nullable=True),
    Column("try_number", Integer, nullable=True),
    Index("ix_edge_kombu_job_state_seq", "state", "seq"),
    Index("ix_edge_kombu_job_queue_seq", "queue", "seq"),
    Index("ix_edge_kombu_job_worker_seq", "worker", "seq"),
)

queue_sample = Table(
    "edge_kombu_queue_sample",
    metadata,
    # One row per queue and minute: the queue page's depth chart over the last hour.
    Column("queue", _NAME, primary_key=True),
    Column("minute", BigInteger, primary_key=True),  # epoch seconds // 60
    Column("ready", Integer, nullable=False),
    Column("oldest_age", Double, nullable=True),
    Index("ix_edge_kombu_queue_sample_minute", "minute"),
)

audit = Table(
    "edge_kombu_audit",
    metadata,
    # Who did what (server/audit.py): one row per central action, newest = highest seq.
    Column("seq", _ID, primary_key=True, autoincrement=True),
    Column("acted_at", Double, nullable=False),
    Column("actor", _NAME, nullable=False),
    Column("via", String(16), nullable=False),  # cli, page, airflow, worker, internal
    Column("action", String(32), nullable=False),
    Column("target", _NAME, nullable=False),  # a worker's or a token's name
    Column("detail", String(1024), nullable=True),  # what changed
    Column("comment", String(1024), nullable=True),  # why, in the actor's words
    Index("ix_edge_kombu_audit_target_seq", "target", "seq"),
)

publish_key = Table(
    "edge_kombu_publish_key",
    metadata,
    # sha1 of what makes a publish the same one (server/broker.py, publish_key): a Celery
    # task's id, retries and ETA, or the client's per-publish id. Kept for the dedupe window.
    Column("key", String(40), primary_key=True),
    Column("created_at", Double, nullable=False, index=True),
)

generation = Table(
    "edge_kombu_generation",
    metadata,
    # A random value that every transaction changing what the API processes cache (the
    # credentials) rewrites: a cache filled under another value is stale
    # (server/credential_cache.py). Random, not counted, so that it never comes back.
    Column("name", String(64), primary_key=True),
    Column("value", String(32), nullable=False),
)
