"""Task runs: the steps inside a flow run, with their own states."""

import functools
import uuid
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import driver_sql, orm
from models.database import dialect_insert, held_instance
from models.errors import ObjectNotFoundError
from models.schemas.actions import TaskRunCreate
from models.schemas.core import TaskRun
from models.transition_sql import STATE_COLUMNS, StateRecord, lock_task_run
from models.types import now_utc

_NOT_INSERTED = ("state", "created", "updated", "estimated_run_time", "estimated_start_time_delta")


def create_task_run(
    session: Session,
    task_run: TaskRunCreate | TaskRun,
    orchestration_parameters: dict[str, Any] | None = None,
) -> orm.TaskRun:
    """Create a task run, or return the one with the same (flow run, task key, dynamic key).

    Only a run created by this call gets the given state, forced.
    """
    if task_run.flow_run_id is not None and session.get(orm.FlowRun, task_run.flow_run_id) is None:
        raise ObjectNotFoundError(f"flow_run_id: no flow run with id {task_run.flow_run_id}")
    now = now_utc()
    values = task_run.model_dump(exclude_unset=True, exclude=set(_NOT_INSERTED))
    for field in ("name", "task_key", "dynamic_key", "empirical_policy", "task_inputs", "tags", "labels"):
        values.setdefault(field, getattr(task_run, field))
    values["empirical_policy"] = task_run.empirical_policy
    values["task_inputs"] = task_run.task_inputs
    values.update(id=values.get("id") or uuid.uuid4(), created=now, updated=now)
    statement = dialect_insert(session, orm.TaskRun).values(**values)
    if task_run.flow_run_id is not None:
        statement = statement.on_conflict_do_nothing(index_elements=["flow_run_id", "task_key", "dynamic_key"])
    created_id = session.execute(statement.returning(orm.TaskRun.id)).scalar_one_or_none()
    row = session.execute(
        sa.select(orm.TaskRun)
        .where(
            orm.TaskRun.flow_run_id == task_run.flow_run_id,
            orm.TaskRun.task_key == task_run.task_key,
            orm.TaskRun.dynamic_key == task_run.dynamic_key,
        )
        .execution_options(populate_existing=True)
    ).scalar_one() if created_id is None else session.get(orm.TaskRun, created_id)
    assert row is not None
    if created_id is not None and task_run.state is not None:
        set_task_run_state(
            session, row.id, task_run.state, force=True, orchestration_parameters=orchestration_parameters
        )
    return row


def read_task_run(session: Session, task_run_id: uuid.UUID) -> orm.TaskRun | None:
    return session.get(orm.TaskRun, task_run_id)


def set_task_run_state(
    session: Session,
    task_run_id: uuid.UUID,
    state: Any,
    force: bool = False,
    task_policy: Any = None,
    orchestration_parameters: dict[str, Any] | None = None,
) -> Any:
    """Propose a state for the task run under its row lock; returns an `OrchestrationResult`.

    `state` is a `State`, `StateCreate` or dict; its timestamp is taken once the lock is held.
    The minimal task policy applies when `force` is set or no policy is given (the wire task
    passes `CoreTaskPolicy`); the global task transforms keep the run's times and counts either
    way. Raises `ObjectNotFoundError` for an unknown id.
    """
    from orchestration.context import (
        TaskOrchestrationContext,
        locked_current_state,
        proposed_state_from,
        state_from_row,
    )
    from orchestration.engine import orchestrate
    from orchestration.task_policy import GlobalTaskPolicy, MinimalTaskPolicy

    proposed = proposed_state_from(state)
    if session.autoflush:
        session.flush()  # as an ORM query would: pending changes are visible to the rules
    run: Any
    if held_instance(session, orm.TaskRun, task_run_id) is not None:
        # the session's instance stays the one truth: lock and refresh it through the ORM
        run = session.execute(
            sa.select(orm.TaskRun)
            .where(orm.TaskRun.id == task_run_id)
            .with_for_update(of=orm.TaskRun)
            .execution_options(populate_existing=True)
        ).unique().scalar_one_or_none()
        initial_state = locked_current_state(session, run) if run is not None else None
    else:
        run = lock_task_run(session, task_run_id)
        initial_state = state_from_row(run.state) if run is not None and run.state is not None else None
    if run is None:
        raise ObjectNotFoundError(f"task_run_id: no task run with id {task_run_id}")
    proposed.timestamp = now_utc()  # under the lock: history order is commit order
    context = TaskOrchestrationContext(
        session=session,
        run=run,
        initial_state=initial_state,
        proposed_state=proposed,
        parameters=dict(orchestration_parameters or {}),
    )
    policy = MinimalTaskPolicy if force or task_policy is None else task_policy
    return orchestrate(context, policy, GlobalTaskPolicy)


class EnclosingFlowRun(NamedTuple):
    """What the task-run rules read of the flow run a task run belongs to."""

    id: uuid.UUID
    run_count: int
    state: StateRecord | None


def read_enclosing_flow_run(session: Session, flow_run_id: uuid.UUID) -> EnclosingFlowRun | None:
    """The flow run with its current state, unlocked; None if it is gone.

    Runs on the session's connection (no autoflush): it is read in the middle of a task-run
    transition, while the task run may be dirty in the session.
    """
    row = driver_sql.first(session, _enclosing_flow_run_statement(), {"flow_run_id": flow_run_id})
    if row is None:
        return None
    state = row[2:]
    return EnclosingFlowRun(row[0], row[1], StateRecord(*state) if state[0] is not None else None)


@functools.cache
def _enclosing_flow_run_statement() -> sa.Select[Any]:
    run, state = orm.FlowRun.__table__, orm.FlowRunState.__table__
    return (
        sa.select(run.c.id, run.c.run_count, *(state.c[name] for name in STATE_COLUMNS))
        .select_from(run.outerjoin(state, state.c.id == run.c.state_id))
        .where(run.c.id == sa.bindparam("flow_run_id"))
    )
