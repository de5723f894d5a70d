"""initial edge tables

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('edge_kombu_binding',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('exchange', sa.String(length=256), nullable=False),
    sa.Column('queue', sa.String(length=256), nullable=False),
    sa.Column('routing_key', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_edge_kombu_binding'))
    )
    with op.batch_alter_table('edge_kombu_binding', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_edge_kombu_binding_exchange'), ['exchange'], unique=False)
        batch_op.create_index(batch_op.f('ix_edge_kombu_binding_queue'), ['queue'], unique=False)

    op.create_table('edge_kombu_consumer',
    sa.Column('session', sa.String(length=64), nullable=False),
    sa.Column('queue', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('session', 'queue', name=op.f('pk_edge_kombu_consumer'))
    )
    with op.batch_alter_table('edge_kombu_consumer', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_edge_kombu_consumer_queue'), ['queue'], unique=False)

    op.create_table('edge_kombu_exchange',
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('type', sa.String(length=16), nullable=False),
    sa.Column('durable', sa.Boolean(), nullable=False),
    sa.Column('auto_delete', sa.Boolean(), nullable=False),
    sa.Column('arguments', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_edge_kombu_exchange'))
    )
    op.create_table('edge_kombu_message',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('queue', sa.String(length=256), nullable=False),
    sa.Column('priority', sa.SmallInteger(), nullable=False),
    sa.Column('slots', sa.Integer(), nullable=False),
    sa.Column('payload', sa.Text().with_variant(mysql.LONGTEXT(), 'mariadb').with_variant(mysql.LONGTEXT(), 'mysql'), nullable=False),
    sa.Column('published_at', sa.Double(), nullable=False),
    sa.Column('expires_at', sa.Double(), nullable=True),
    sa.Column('redelivered', sa.Boolean(), nullable=False),
    sa.Column('session', sa.String(length=64), nullable=True),
    sa.Column('lease_nonce', sa.String(length=16), nullable=True),
    sa.Column('leased_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_edge_kombu_message'))
    )
    with op.batch_alter_table('edge_kombu_message', schema=None) as batch_op:
        batch_op.create_index('ix_edge_kombu_message_claim', ['queue', 'session', 'priority', 'id'], unique=False)
        batch_op.create_index('ix_edge_kombu_message_expires_at', ['expires_at'], unique=False)
        batch_op.create_index('ix_edge_kombu_message_session', ['session'], unique=False)

    op.create_table('edge_kombu_queue',
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('durable', sa.Boolean(), nullable=False),
    sa.Column('auto_delete', sa.Boolean(), nullable=False),
    sa.Column('exclusive', sa.Boolean(), nullable=False),
    sa.Column('expires_ms', sa.BigInteger(), nullable=True),
    sa.Column('message_ttl_ms', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('last_used_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_edge_kombu_queue'))
    )
    op.create_table('edge_kombu_result',
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('value', sa.LargeBinary().with_variant(mysql.LONGBLOB(), 'mariadb').with_variant(mysql.LONGBLOB(), 'mysql'), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.Column('expires_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_edge_kombu_result'))
    )
    with op.batch_alter_table('edge_kombu_result', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_edge_kombu_result_expires_at'), ['expires_at'], unique=False)

    op.create_table('edge_kombu_session',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('principal', sa.String(length=256), nullable=False),
    sa.Column('opened_at', sa.Double(), nullable=False),
    sa.Column('last_seen', sa.Double(), nullable=False),
    sa.Column('closed_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_edge_kombu_session'))
    )
    with op.batch_alter_table('edge_kombu_session', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_edge_kombu_session_closed_at'), ['closed_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_edge_kombu_session_last_seen'), ['last_seen'], unique=False)

    op.create_table('edge_kombu_token',
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_edge_kombu_token')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_edge_kombu_token_token_hash'))
    )


def downgrade() -> None:
    op.drop_table('edge_kombu_token')
    with op.batch_alter_table('edge_kombu_session', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_edge_kombu_session_last_seen'))
        batch_op.drop_index(batch_op.f('ix_edge_kombu_session_closed_at'))

    op.drop_table('edge_kombu_session')
    with op.batch_alter_table('edge_kombu_result', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_edge_kombu_result_expires_at'))

    op.drop_table('edge_kombu_result')
    op.drop_table('edge_kombu_queue')
    with op.batch_alter_table('edge_kombu_message', schema=None) as batch_op:
        batch_op.drop_index('ix_edge_kombu_message_session')
        batch_op.drop_index('ix_edge_kombu_message_expires_at')
        batch_op.drop_index('ix_edge_kombu_message_claim')

    op.drop_table('edge_kombu_message')
    op.drop_table('edge_kombu_exchange')
    with op.batch_alter_table('edge_kombu_consumer', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_edge_kombu_consumer_queue'))

    op.drop_table('edge_kombu_consumer')
    with op.batch_alter_table('edge_kombu_binding', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_edge_kombu_binding_queue'))
        batch_op.drop_index(batch_op.f('ix_edge_kombu_binding_exchange'))

    op.drop_table('edge_kombu_binding')
