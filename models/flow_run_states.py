"""A flow run's state history."""

import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm


def read_flow_run_states(session: Session, flow_run_id: uuid.UUID) -> list[orm.FlowRunState]:
    """Every state the run has had, oldest first (empty for an unknown run, as Prefect). Read-only."""
    return list(
        session.scalars(
            sa.select(orm.FlowRunState)
            .where(orm.FlowRunState.flow_run_id == flow_run_id)
            .order_by(orm.FlowRunState.timestamp, orm.FlowRunState.id)
        )
    )
