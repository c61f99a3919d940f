"""task run state cache

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 21:34:15.458056
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

import models.types


revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('task_run_state_cache',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('created', models.types.Timestamp(timezone=True), nullable=False),
    sa.Column('updated', models.types.Timestamp(timezone=True), nullable=False),
    sa.Column('cache_key', sa.String(), nullable=False),
    sa.Column('cache_key_digest', sa.String(length=64), nullable=False),
    sa.Column('cache_expiration', models.types.Timestamp(timezone=True), nullable=True),
    sa.Column('task_run_state_id', sa.Uuid(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_run_state_cache'))
    )
    # The digest, not the key, is indexed: a key of 2,000 four-byte characters is larger than a
    # PostgreSQL btree entry may be (2,704 bytes).
    op.create_index('ix_task_run_state_cache__cache_key_digest_created_desc', 'task_run_state_cache', ['cache_key_digest', sa.literal_column('created DESC')], unique=False)
    op.create_index(op.f('ix_task_run_state_cache__updated'), 'task_run_state_cache', ['updated'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_task_run_state_cache__updated'), table_name='task_run_state_cache')
    op.drop_index('ix_task_run_state_cache__cache_key_digest_created_desc', table_name='task_run_state_cache')
    op.drop_table('task_run_state_cache')
