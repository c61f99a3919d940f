"""concurrency limit rows updated in place

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 15:30:00

Every slot taken or given back updates its limit's row (`active_slots`, `updated`). The index on
`updated` made each of those updates a non-HOT one: a new row version on another page and a new
entry in every index of the table, for a handful of rows updated thousands of times a minute. In a
30-minute soak with autovacuum off, 4 limit rows had left 35,000 dead versions behind, which each
slot's index look-up walked past. Nothing reads limits by `updated`; without the index, the
updates are HOT (the new version on the same page, no index entry) and PostgreSQL prunes the old
versions as it goes.
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0006"
down_revision: Union[str, None] = "0005"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.drop_index("ix_concurrency_limit_v2__updated", table_name="concurrency_limit_v2")


def downgrade() -> None:
    op.create_index("ix_concurrency_limit_v2__updated", "concurrency_limit_v2", ["updated"], unique=False)
