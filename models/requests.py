"""The inbox: one row per state-changing task id, written in the same transaction as its effect.

A task first looks its id up: a copy that already committed left its outcome, which is returned
without doing anything again. Otherwise the task does its work and records the outcome at the
end, in the same transaction. Two copies running at once both get past the look-up; the second
one's INSERT waits for the first copy's uncommitted row and, once that commits, inserts nothing:
the caller rolls back (the copy's work goes with it) and runs again, finding the record.

Both statements are Core, built once, run on the session's connection through `models.driver_sql`:
two round trips per task.
"""

import datetime
import functools
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import driver_sql, orm
from models.database import insert_for_dialect
from models.errors import ValidationError
from models.types import now_utc

_requests: sa.Table = orm.ProcessedRequest.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class Recorded:
    """What an earlier copy of a task returned (`outcome` may be null, e.g. for cleanup)."""

    name: str
    outcome: Any


@functools.cache
def _find_statement() -> sa.Select[Any]:
    return sa.select(_requests.c.name, _requests.c.outcome).where(_requests.c.task_id == sa.bindparam("task_id"))


@functools.cache
def _record_statement(dialect: str) -> Any:
    insert = insert_for_dialect(dialect, _requests)
    return insert.on_conflict_do_nothing(index_elements=["task_id"]).returning(_requests.c.task_id)


def find_outcome(session: Session, task_id: str) -> Recorded | None:
    """The recorded outcome of `task_id`, or None if no copy of it has committed."""
    row = driver_sql.first(session, _find_statement(), {"task_id": task_id})
    return None if row is None else Recorded(*row)


def replayed_outcome(session: Session, task_id: str, name: str) -> Recorded | None:
    """The outcome a committed copy of this task recorded, or None if there is none yet.

    A recorded id of another task name is refused: task ids are not to be reused across tasks.
    """
    recorded = find_outcome(session, task_id)
    if recorded is not None and recorded.name != name:
        raise ValidationError(f"task_id: {task_id} was already used by task {recorded.name!r}")
    return recorded


def record_outcome(session: Session, task_id: str, name: str, outcome: Any) -> bool:
    """Record what `task_id` returned, in the caller's transaction.

    False when a copy of the task recorded first (the statement waits for that copy's transaction
    if it is still open): the caller must roll back, its work is a duplicate.
    """
    statement = _record_statement(session.get_bind().dialect.name)
    values = {"task_id": task_id, "name": name, "outcome": outcome, "created": now_utc()}
    return driver_sql.first(session, statement, values) is not None


def prune(session: Session, older_than: datetime.datetime, limit: int | None = None) -> int:
    """Forget requests recorded before `older_than` (at most `limit` of them, oldest first);
    returns how many rows went."""
    doomed = sa.select(orm.ProcessedRequest.task_id).where(orm.ProcessedRequest.created < older_than)
    if limit is not None:
        doomed = doomed.order_by(orm.ProcessedRequest.created).limit(limit)
    result = session.execute(
        sa.delete(orm.ProcessedRequest)
        .where(orm.ProcessedRequest.task_id.in_(doomed.scalar_subquery()))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount
