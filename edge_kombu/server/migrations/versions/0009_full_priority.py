"""full priority: a message's priority is a 32-bit integer (Airflow's whole priority_weight)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("edge_kombu_message", schema=None) as batch_op:
        batch_op.alter_column("priority", existing_type=sa.SmallInteger(),
                              type_=sa.Integer(), existing_nullable=False)


def downgrade() -> None:
    # Priorities beyond the small range are clamped first, or the narrowing would fail.
    op.execute("UPDATE edge_kombu_message SET priority = 32767 WHERE priority > 32767")
    op.execute("UPDATE edge_kombu_message SET priority = -32768 WHERE priority < -32768")
    with op.batch_alter_table("edge_kombu_message", schema=None) as batch_op:
        batch_op.alter_column("priority", existing_type=sa.Integer(),
                              type_=sa.SmallInteger(), existing_nullable=False)
