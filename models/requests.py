"""The inbox: one row per state-changing task id, written in the same transaction as its effect.

A task claims its id before doing anything: on PostgreSQL a second copy of the same task id
blocks on the first copy's uncommitted row and, once that commits, finds the recorded outcome
instead of orchestrating again. If a copy nevertheless loses a race at commit (the primary key
is the last guard), the caller rolls back and runs the unit again, which then finds the record.
"""

import datetime
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.database import dialect_insert
from models.errors import ValidationError
from models.types import now_utc


_CLAIMED = "flowruns.claimed_requests"
"""`session.info` key: task id -> the transaction that claimed it (a claim counts only there)."""


@dataclass(frozen=True)
class Recorded:
    """What an earlier copy of a task returned (`outcome` may be null, e.g. for cleanup)."""

    name: str
    outcome: Any


def find_outcome(session: Session, task_id: str) -> Recorded | None:
    """The recorded outcome of `task_id`, or None if no copy of it has committed."""
    row = session.execute(
        sa.select(orm.ProcessedRequest.name, orm.ProcessedRequest.outcome).where(
            orm.ProcessedRequest.task_id == task_id
        )
    ).one_or_none()
    return None if row is None else Recorded(name=row.name, outcome=row.outcome)


def claim(session: Session, task_id: str, name: str) -> Recorded | None:
    """Take `task_id` for this transaction; if a copy already committed, return its outcome.

    None means the caller owns the id and must `record_outcome` before committing. A recorded
    id of another task name is refused: task ids are not to be reused across tasks.
    """
    claimed = session.execute(
        dialect_insert(session, orm.ProcessedRequest)
        .values(task_id=task_id, name=name, outcome=None, created=now_utc())
        .on_conflict_do_nothing(index_elements=["task_id"])
        .returning(orm.ProcessedRequest.task_id)
    ).scalar_one_or_none()
    if claimed is not None:
        session.info.setdefault(_CLAIMED, {})[task_id] = session.get_transaction()
        return None
    recorded = find_outcome(session, task_id)
    if recorded is None:  # pragma: no cover - the conflicting row cannot vanish inside one statement
        raise RuntimeError(f"task id {task_id} conflicts with an inbox row that is not there")
    if recorded.name != name:
        raise ValidationError(f"task_id: {task_id} was already used by task {recorded.name!r}")
    return recorded


def record_outcome(session: Session, task_id: str, name: str, outcome: Any) -> None:
    """Record what `task_id` returned, in the caller's transaction.

    Fills in the row this transaction claimed; without a claim it INSERTs, and a copy that
    committed first makes the INSERT fail with IntegrityError (the caller then runs again).
    """
    claimed_in = session.info.get(_CLAIMED, {}).pop(task_id, None)
    if claimed_in is not None and claimed_in is session.get_transaction():
        session.execute(
            sa.update(orm.ProcessedRequest)
            .where(orm.ProcessedRequest.task_id == task_id)
            .values(outcome=outcome)
            .execution_options(synchronize_session=False)
        )
        return
    session.execute(
        sa.insert(orm.ProcessedRequest).values(task_id=task_id, name=name, outcome=outcome, created=now_utc())
    )


def prune(session: Session, older_than: datetime.datetime) -> int:
    """Forget requests recorded before `older_than`; returns how many rows went."""
    result = session.execute(
        sa.delete(orm.ProcessedRequest)
        .where(orm.ProcessedRequest.created < older_than)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount
