"""audit log of central actions (who did what)

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "edge_kombu_audit",
        sa.Column("seq", _ID, autoincrement=True, nullable=False),
        sa.Column("acted_at", sa.Double(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=256), nullable=False),
        sa.Column("detail", sa.String(length=1024), nullable=True),
        sa.Column("comment", sa.String(length=1024), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_edge_kombu_audit")),
    )
    with op.batch_alter_table("edge_kombu_audit", schema=None) as batch_op:
        batch_op.create_index("ix_edge_kombu_audit_target_seq", ["target", "seq"], unique=False)


def downgrade() -> None:
    op.drop_table("edge_kombu_audit")
