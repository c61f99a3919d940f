"""Helpers for the task-run policy tests: real flow runs and task runs, proposals through
`models.task_runs.set_task_run_state` on either lock path, and what was stored."""

import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import flow_runs, orm, task_runs
from models.schemas import actions, core, states
from models.schemas.responses import OrchestrationResult
from models.schemas.states import State
from models.types import now_utc
from orchestration import CoreTaskPolicy

PERSISTED = {"type": "reference", "storage_key": "s3://bucket/result"}

_LOCK_PATH = {"worker session": False}


@pytest.fixture(params=["session holding the run", "worker session"])
def lock_path(request: pytest.FixtureRequest) -> Any:
    """Both ways a task run is locked: the session already holds it as an ORM instance, or it
    does not (a worker's session, read with Core); `propose` then detaches the run around the
    call and reloads it afterwards."""
    _LOCK_PATH["worker session"] = request.param == "worker session"
    yield request.param
    _LOCK_PATH["worker session"] = False


def propose(session: Session, task_run: orm.TaskRun, state: State, **kwargs: Any) -> OrchestrationResult:
    """Propose under the core task policy (unless told otherwise) and commit."""
    kwargs.setdefault("task_policy", CoreTaskPolicy)
    worker = _LOCK_PATH["worker session"] and task_run in session
    if worker:
        session.expunge(task_run)
    result = task_runs.set_task_run_state(session, task_run.id, state, **kwargs)
    session.commit()
    if worker:
        session.add(task_run)
        session.refresh(task_run)
    return result


def force(session: Session, task_run: orm.TaskRun, state: State) -> OrchestrationResult:
    return propose(session, task_run, state, force=True)


def flow_run_in(session: Session, flow: orm.Flow, *initial: State) -> orm.FlowRun:
    """A flow run forced through the given states (none: a run without a state)."""
    run = flow_runs.create_flow_run(session, core.FlowRun(flow_id=flow.id))
    session.commit()
    for state in initial:
        flow_runs.set_flow_run_state(session, run.id, state, force=True)
        session.commit()
    return run


def task_run_in(
    session: Session, flow_run: orm.FlowRun | None, *initial: State, key: str = "extract", **fields: Any
) -> orm.TaskRun:
    """A task run of `flow_run`, created PENDING, then forced through the given states."""
    task_run = task_runs.create_task_run(
        session,
        actions.TaskRunCreate(
            flow_run_id=flow_run.id if flow_run is not None else None,
            task_key=key,
            dynamic_key="0",
            state=actions.StateCreate(type="PENDING"),
            **fields,
        ),
    )
    session.commit()
    for state in initial:
        force(session, task_run, state)
    return task_run


def history(session: Session, task_run: orm.TaskRun) -> list[str]:
    """The names of the task run's stored states, oldest first."""
    return list(
        session.execute(
            sa.select(orm.TaskRunState.name)
            .where(orm.TaskRunState.task_run_id == task_run.id)
            .order_by(orm.TaskRunState.timestamp)
        ).scalars()
    )


def stored(session: Session, task_run: orm.TaskRun) -> orm.TaskRun:
    """The task run as the database holds it now."""
    row = session.get(orm.TaskRun, task_run.id, populate_existing=True)
    assert row is not None
    return row


def past(seconds: float = 60) -> datetime.datetime:
    return now_utc() - datetime.timedelta(seconds=seconds)


def future(seconds: float = 3600) -> datetime.datetime:
    return now_utc() + datetime.timedelta(seconds=seconds)


def completed(data: Any = None, **details: Any) -> State:
    return states.Completed(data=data, state_details=details)


def running(**details: Any) -> State:
    return states.Running(state_details=details)
