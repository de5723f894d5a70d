"""generations: a value per cached kind of data, rewritten on every change to it

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "edge_kombu_generation",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_edge_kombu_generation")),
    )


def downgrade() -> None:
    op.drop_table("edge_kombu_generation")
