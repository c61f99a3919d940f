"""transition conflict function

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 22:30:00

A transition's write is one statement that applies the outcome only if the run still points at
the state the rules saw. When that matched but a part it needs (a slot, the inbox row) was taken
meanwhile, `flowruns_transition_conflict(true)` raises a serialization failure (40001): the whole
statement is undone and the caller reads and decides again. PostgreSQL only.
"""
from typing import Sequence, Union

from alembic import op

revision: str = "0005"
down_revision: Union[str, None] = "0004"
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

FUNCTION = """
CREATE OR REPLACE FUNCTION flowruns_transition_conflict(conflict boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF conflict THEN
        RAISE EXCEPTION 'flowruns: the run moved on, or its slot or request was taken, during the transition'
            USING ERRCODE = '40001';
    END IF;
    RETURN true;
END
$$
"""


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS flowruns_transition_conflict(boolean)")
