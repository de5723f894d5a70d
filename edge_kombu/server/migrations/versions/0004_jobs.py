"""jobs history and queue depth samples (monitoring pages)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "edge_kombu_job",
        sa.Column("seq", _ID, autoincrement=True, nullable=False),
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("queue", sa.String(length=256), nullable=False),
        sa.Column("slots", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("worker", sa.String(length=256), nullable=True),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("queued_at", sa.Double(), nullable=False),
        sa.Column("received_at", sa.Double(), nullable=True),
        sa.Column("started_at", sa.Double(), nullable=True),
        sa.Column("finished_at", sa.Double(), nullable=True),
        sa.Column("dag_id", sa.String(length=250), nullable=True),
        sa.Column("ti_task_id", sa.String(length=250), nullable=True),
        sa.Column("run_id", sa.String(length=250), nullable=True),
        sa.Column("map_index", sa.Integer(), nullable=True),
        sa.Column("try_number", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_edge_kombu_job")),
        sa.UniqueConstraint("task_id", name=op.f("uq_edge_kombu_job_task_id")),
    )
    with op.batch_alter_table("edge_kombu_job", schema=None) as batch_op:
        batch_op.create_index("ix_edge_kombu_job_message_id", ["message_id"], unique=False)
        batch_op.create_index("ix_edge_kombu_job_finished_at", ["finished_at"], unique=False)
        batch_op.create_index("ix_edge_kombu_job_state_seq", ["state", "seq"], unique=False)
        batch_op.create_index("ix_edge_kombu_job_queue_seq", ["queue", "seq"], unique=False)
        batch_op.create_index("ix_edge_kombu_job_worker_seq", ["worker", "seq"], unique=False)
    op.create_table(
        "edge_kombu_queue_sample",
        sa.Column("queue", sa.String(length=256), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("ready", sa.Integer(), nullable=False),
        sa.Column("oldest_age", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("queue", "minute", name=op.f("pk_edge_kombu_queue_sample")),
    )
    with op.batch_alter_table("edge_kombu_queue_sample", schema=None) as batch_op:
        batch_op.create_index("ix_edge_kombu_queue_sample_minute", ["minute"], unique=False)
    with op.batch_alter_table("edge_kombu_worker", schema=None) as batch_op:
        batch_op.create_index("ix_edge_kombu_worker_session", ["session"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("edge_kombu_worker", schema=None) as batch_op:
        batch_op.drop_index("ix_edge_kombu_worker_session")
    op.drop_table("edge_kombu_queue_sample")
    op.drop_table("edge_kombu_job")
