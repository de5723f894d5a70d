"""publish keys: a publish repeated within the dedupe window is stored once

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "edge_kombu_publish_key",
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_edge_kombu_publish_key")),
    )
    with op.batch_alter_table("edge_kombu_publish_key", schema=None) as batch_op:
        batch_op.create_index("ix_edge_kombu_publish_key_created_at", ["created_at"],
                              unique=False)


def downgrade() -> None:
    op.drop_table("edge_kombu_publish_key")
