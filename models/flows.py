"""Flows: the named things that runs execute."""

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.database import dialect_insert
from models.schemas.actions import FlowCreate
from models.schemas.core import Flow
from models.types import now_utc


def create_flow(session: Session, flow: FlowCreate | Flow) -> orm.Flow:
    """Create the flow, or return the existing one of that name (idempotent)."""
    now = now_utc()
    fields = flow.model_dump(include={"name", "tags", "labels"})
    insert = (
        dialect_insert(session, orm.Flow)
        .values(id=uuid.uuid4(), created=now, updated=now, **fields)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    session.execute(insert)
    return session.execute(
        sa.select(orm.Flow).where(orm.Flow.name == flow.name).execution_options(populate_existing=True)
    ).scalar_one()


def read_flow(session: Session, flow_id: uuid.UUID) -> orm.Flow | None:
    return session.get(orm.Flow, flow_id)


def read_flow_by_name(session: Session, name: str) -> orm.Flow | None:
    return session.execute(sa.select(orm.Flow).where(orm.Flow.name == name)).scalar_one_or_none()
