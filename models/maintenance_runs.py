"""When each maintenance task last ran: beat's heartbeat, as the database saw it."""

import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.database import dialect_insert
from models.types import now_utc


def record_run(session: Session, task_name: str, outcome: Any) -> None:
    """Note that `task_name` ran now, with what it did (one row per task, overwritten)."""
    now = now_utc()
    statement = dialect_insert(session, orm.MaintenanceRun).values(task_name=task_name, last_run=now, outcome=outcome)
    session.execute(statement.on_conflict_do_update(
        index_elements=["task_name"], set_={"last_run": now, "outcome": outcome}))


def last_run(session: Session, task_name: str) -> datetime.datetime | None:
    """When `task_name` last ran, if ever."""
    return session.execute(
        sa.select(orm.MaintenanceRun.last_run).where(orm.MaintenanceRun.task_name == task_name)
    ).scalar_one_or_none()
