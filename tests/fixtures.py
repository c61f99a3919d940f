"""Row-building fixtures shared by the suite: real rows, committed."""

from typing import Any

import pytest
from sqlalchemy.orm import Session

from models import deployments, flow_runs, flows, orm, work_pools, work_queues
from models.schemas import actions, core


@pytest.fixture
def flow(session: Session) -> orm.Flow:
    row = flows.create_flow(session, actions.FlowCreate(name="etl", labels={"team": "data"}))
    session.commit()
    return row


@pytest.fixture
def work_pool(session: Session) -> orm.WorkPool:
    row = work_pools.create_work_pool(session, actions.WorkPoolCreate(name="pool-a", type="process"))
    session.commit()
    return row


@pytest.fixture
def work_queue(session: Session, work_pool: orm.WorkPool) -> orm.WorkQueue:
    row = work_queues.create_work_queue(
        session, actions.WorkQueueCreate(name="queue-a", work_pool_name=work_pool.name)
    )
    session.commit()
    return row


def make_deployment(session: Session, flow: orm.Flow, **fields: Any) -> orm.Deployment:
    fields.setdefault("name", "nightly")
    row = deployments.create_deployment(session, actions.DeploymentCreate(flow_id=flow.id, **fields))
    session.commit()
    return row


@pytest.fixture
def deployment(session: Session, flow: orm.Flow) -> orm.Deployment:
    return make_deployment(session, flow)


@pytest.fixture
def limited_deployment(session: Session, flow: orm.Flow) -> orm.Deployment:
    """A deployment with a concurrency limit of 2 (ENQUEUE on collision)."""
    return make_deployment(
        session,
        flow,
        name="limited",
        concurrency_limit=2,
        concurrency_options={"collision_strategy": "ENQUEUE"},
    )


def make_flow_run(session: Session, flow: orm.Flow, **fields: Any) -> orm.FlowRun:
    row = flow_runs.create_flow_run(session, core.FlowRun(flow_id=flow.id, **fields))
    session.commit()
    return row


@pytest.fixture
def flow_run(session: Session, flow: orm.Flow) -> orm.FlowRun:
    return make_flow_run(session, flow, flow_version="0.1")
