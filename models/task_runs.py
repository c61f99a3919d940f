"""Task runs: the steps inside a flow run, with their own states."""

import uuid
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.database import dialect_insert
from models.errors import ObjectNotFoundError
from models.schemas.actions import TaskRunCreate
from models.schemas.core import TaskRun
from models.schemas.responses import OrchestrationResult
from models.schemas.states import StateType
from models.transitions import transition_service
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
    flow_run = None
    if task_run.flow_run_id is not None:
        flow_run = session.get(orm.FlowRun, task_run.flow_run_id)
        if flow_run is None:
            raise ObjectNotFoundError(f"flow_run_id: no flow run with id {task_run.flow_run_id}")
    else:
        # The unique index cannot see NULL flow runs as equal: look the key up, as Prefect does.
        existing = session.execute(
            sa.select(orm.TaskRun)
            .where(orm.TaskRun.flow_run_id.is_(None), orm.TaskRun.task_key == task_run.task_key,
                   orm.TaskRun.dynamic_key == task_run.dynamic_key)
            .limit(1)
        ).scalar_one_or_none()
        if existing is not None:
            return existing
    now = now_utc()
    values = task_run.model_dump(exclude_unset=True, exclude=set(_NOT_INSERTED))
    for field in ("name", "task_key", "dynamic_key", "empirical_policy", "task_inputs", "tags"):
        values.setdefault(field, getattr(task_run, field))
    values["empirical_policy"] = task_run.empirical_policy
    values["task_inputs"] = task_run.task_inputs
    values["labels"] = _labels_with_system_labels(task_run, flow_run)
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
        transition_service().set_new_task_run_state(session, row, task_run.state, orchestration_parameters)
    return row


def _labels_with_system_labels(task_run: TaskRunCreate | TaskRun, flow_run: orm.FlowRun | None) -> dict[str, Any]:
    """The flow run's labels, `prefect.flow-run.id`, then the task run's own; later keys win."""
    if flow_run is None:
        return dict(task_run.labels or {})
    return {**(flow_run.labels or {}), "prefect.flow-run.id": str(flow_run.id), **(task_run.labels or {})}


def read_task_run(session: Session, task_run_id: uuid.UUID) -> orm.TaskRun | None:
    return session.get(orm.TaskRun, task_run_id)


def set_task_run_state(
    session: Session,
    task_run_id: uuid.UUID,
    state: Any,
    force: bool = False,
    task_policy: Any = None,
    orchestration_parameters: dict[str, Any] | None = None,
) -> OrchestrationResult:
    """Propose a state for the task run; the policy decides what is written. Returns an
    `OrchestrationResult`.

    `state` is a `State`, `StateCreate` or dict. The minimal task policy applies when `force` is
    set or no policy is given; the global task transforms keep the run's times and counts. Raises
    `ObjectNotFoundError` for an unknown id. The write applies only if the run has not moved on
    since it was read (otherwise it is read and decided again): no lock is held while rules run.
    """
    transition = transition_service().set_task_run_state(
        session, task_run_id, state, force=force, task_policy=task_policy,
        orchestration_parameters=orchestration_parameters,
    )
    assert transition.result is not None
    return transition.result


def failed_task_run_ids(session: Session, flow_run_id: uuid.UUID) -> list[uuid.UUID]:
    """The task runs of the flow run that are FAILED."""
    return list(session.execute(
        sa.select(orm.TaskRun.id).where(orm.TaskRun.flow_run_id == flow_run_id,
                                        orm.TaskRun.state_type == StateType.FAILED)
    ).scalars())


def reset_run_counts(session: Session, task_run_ids: Sequence[uuid.UUID]) -> None:
    """Start the task runs' attempt counts again (their retries begin anew)."""
    if task_run_ids:
        session.execute(
            sa.update(orm.TaskRun).where(orm.TaskRun.id.in_(task_run_ids)).values(run_count=0)
            .execution_options(synchronize_session="fetch")
        )
