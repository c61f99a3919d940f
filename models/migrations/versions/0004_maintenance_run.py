"""maintenance run heartbeat

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 22:05:00
"""
from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op

import models.types

revision: str = "0004"
down_revision: Union[str, None] = "0003"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table(
        "maintenance_run",
        sa.Column("task_name", sa.String(), nullable=False),
        sa.Column("last_run", models.types.Timestamp(timezone=True), nullable=False),
        sa.Column("outcome", models.types.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("task_name", name=op.f("pk_maintenance_run")),
    )


def downgrade() -> None:
    op.drop_table("maintenance_run")
