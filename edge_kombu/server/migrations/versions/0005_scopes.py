"""credential scopes: token kind, queues, expiry, last use; queue owners; task grants

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("edge_kombu_token", schema=None) as batch_op:
        batch_op.alter_column("token_hash", existing_type=sa.String(length=64), nullable=True)
        # Tokens issued before scopes had the powers of the central site: they stay central.
        batch_op.add_column(sa.Column("kind", sa.String(length=16), nullable=False,
                                      server_default="central"))
        batch_op.add_column(sa.Column("queues", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("publish", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("expires_at", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", sa.Double(), nullable=True))
    with op.batch_alter_table("edge_kombu_token", schema=None) as batch_op:
        batch_op.alter_column("kind", existing_type=sa.String(length=16), existing_nullable=False,
                              server_default=None)
    with op.batch_alter_table("edge_kombu_queue", schema=None) as batch_op:
        batch_op.add_column(sa.Column("owner", sa.String(length=256), nullable=True))
    op.create_table(
        "edge_kombu_task_grant",
        sa.Column("task_id", sa.String(length=255), nullable=False),
        sa.Column("principal", sa.String(length=256), nullable=False),
        sa.Column("group_id", sa.String(length=255), nullable=True),
        sa.Column("granted_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("task_id", "principal", name=op.f("pk_edge_kombu_task_grant")),
    )
    with op.batch_alter_table("edge_kombu_task_grant", schema=None) as batch_op:
        batch_op.create_index("ix_edge_kombu_task_grant_granted_at", ["granted_at"], unique=False)
        batch_op.create_index("ix_edge_kombu_task_grant_group", ["group_id", "principal"],
                              unique=False)


def downgrade() -> None:
    op.drop_table("edge_kombu_task_grant")
    with op.batch_alter_table("edge_kombu_queue", schema=None) as batch_op:
        batch_op.drop_column("owner")
    with op.batch_alter_table("edge_kombu_token", schema=None) as batch_op:
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("publish")
        batch_op.drop_column("queues")
        batch_op.drop_column("kind")
        batch_op.alter_column("token_hash", existing_type=sa.String(length=64), nullable=False)
