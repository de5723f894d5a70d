"""task logs pushed by edge workers

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "edge_kombu_task_log",
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("dag_id", sa.String(length=250), nullable=False),
        sa.Column("task_id", sa.String(length=250), nullable=False),
        sa.Column("run_id", sa.String(length=250), nullable=False),
        sa.Column("map_index", sa.Integer(), nullable=False),
        sa.Column("try_number", sa.Integer(), nullable=False),
        sa.Column("ti_id", sa.String(length=36), nullable=True),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_edge_kombu_task_log")),
    )
    with op.batch_alter_table("edge_kombu_task_log", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_edge_kombu_task_log_updated_at"), ["updated_at"], unique=False
        )
    op.create_table(
        "edge_kombu_task_log_chunk",
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column(
            "data",
            sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("key", "start", name=op.f("pk_edge_kombu_task_log_chunk")),
    )


def downgrade() -> None:
    op.drop_table("edge_kombu_task_log_chunk")
    op.drop_table("edge_kombu_task_log")
