"""edge workers: registration, heartbeats, admin requests

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "edge_kombu_worker",
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("instance", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("queues", sa.Text(), nullable=False),
        sa.Column("slots_total", sa.Integer(), nullable=False),
        sa.Column("slots_used", sa.Integer(), nullable=False),
        sa.Column(
            "running",
            sa.Text().with_variant(mysql.LONGTEXT(), "mariadb").with_variant(mysql.LONGTEXT(), "mysql"),
            nullable=False,
        ),
        sa.Column("sysinfo", sa.Text(), nullable=False),
        sa.Column("versions", sa.Text(), nullable=False),
        sa.Column("version_warning", sa.String(length=512), nullable=True),
        sa.Column("session", sa.String(length=64), nullable=True),
        sa.Column("first_online", sa.Double(), nullable=False),
        sa.Column("last_heartbeat", sa.Double(), nullable=False),
        sa.Column("maintenance", sa.Boolean(), nullable=False),
        sa.Column("maintenance_comment", sa.String(length=1024), nullable=True),
        sa.Column("maintenance_changed_at", sa.Double(), nullable=True),
        sa.Column("shutdown_requested", sa.Boolean(), nullable=False),
        sa.Column("desired_queues", sa.Text(), nullable=True),
        sa.Column("desired_concurrency", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_edge_kombu_worker")),
    )
    with op.batch_alter_table("edge_kombu_worker", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_edge_kombu_worker_state"), ["state"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_edge_kombu_worker_last_heartbeat"), ["last_heartbeat"], unique=False
        )


def downgrade() -> None:
    op.drop_table("edge_kombu_worker")
