"""The flow-run model functions. Each takes the caller's session; none commits."""

import functools
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from models import orm
from models.database import dialect_name, held_instance
from models.errors import ObjectNotFoundError, ValidationError
from models.flow_run_graph import read_flow_run_graph, read_task_run_dependencies
from models.flow_run_inserts import (
    ParentIds,
    Parents,
    insert_flow_run,
    new_run_row,
    persistent_flow_run,
    read_parents,
)
from models.flow_run_queries import count_flow_runs, read_flow_runs
from models.job_variables import check_job_variables
from models.schemas.actions import FlowRunCreate, FlowRunUpdate
from models.schemas.core import FlowRun
from models.schemas.responses import OrchestrationResult
from models.schemas.states import StateType
from models.transitions import transition_service
from models.types import now_utc
from models.work_queues import resolve_work_queue

__all__ = [
    "cleanup_flow_run_concurrency_slots",
    "count_flow_runs",
    "create_flow_run",
    "delete_flow_run",
    "delete_flow_runs",
    "read_flow_run",
    "read_flow_run_graph",
    "read_flow_runs",
    "read_task_run_dependencies",
    "set_flow_run_state",
    "update_flow_run",
    "update_flow_run_labels",
    "with_system_labels_for_flow_run",
]

_NOT_INSERTED = {
    "created", "updated", "state", "estimated_run_time", "estimated_start_time_delta",
    "work_pool_name",
}


def create_flow_run(
    session: Session,
    flow_run: FlowRun | FlowRunCreate,
    orchestration_parameters: dict[str, Any] | None = None,
) -> orm.FlowRun:
    """Create a run; with an idempotency key, return the flow's existing run for that key instead.

    Only a run created by this call gets the given state, set with force (no slot is taken).
    """
    parents = read_parents(session, ParentIds.of(flow_run))
    queue = None
    if isinstance(flow_run, FlowRunCreate):
        queue = resolve_work_queue(session, flow_run.work_pool_name, flow_run.work_queue_name)
    values = new_flow_run_values(flow_run, parents, queue)

    idempotent = bool(flow_run.idempotency_key)
    if flow_run.state is not None and not idempotent and dialect_name(session) == "postgresql":
        # Its INSERT goes with the first state's, in one statement.
        row: dict[str, Any] | None = new_run_row(values, idempotent)
        unsaved = True
    else:
        row, unsaved = insert_flow_run(session, values, idempotent), False
    if row is None:  # the idempotency key is taken: that run is the answer
        return session.execute(
            sa.select(orm.FlowRun)
            .where(
                orm.FlowRun.flow_id == flow_run.flow_id,
                orm.FlowRun.idempotency_key == flow_run.idempotency_key,
            )
            .execution_options(populate_existing=True)
        ).scalar_one()
    run = persistent_flow_run(session, row)
    if queue is not None or run.work_queue_id is None:
        set_committed_value(run, "work_queue", queue)  # known: no lazy load when it is read
    if flow_run.state is not None:
        # The run is this transaction's own (no one else can see it yet): nothing to read or
        # compare. The rules work on a snapshot of it; the write keeps the session's instance in step.
        transition_service().set_new_flow_run_state(session, row, flow_run.state, unsaved, orchestration_parameters)
    return run


def new_flow_run_values(
    flow_run: FlowRun | FlowRunCreate, parents: Parents, queue: orm.WorkQueue | None
) -> dict[str, Any]:
    """The columns a create sets for `flow_run` (`new_run_row` fills in the rest): what the
    request set, its queue, its labels over its parents', its timestamps and id."""
    values = flow_run.model_dump(exclude_unset=True, exclude=_NOT_INSERTED)
    for required in ("name", "flow_id"):
        values[required] = getattr(flow_run, required)
    if queue is not None:
        values["work_queue_id"] = queue.id
        if flow_run.work_queue_name:  # a pool alone (or an empty queue name) leaves the column as sent, as Prefect's API does
            values["work_queue_name"] = queue.name
    if "empirical_policy" in values:
        values["empirical_policy"] = flow_run.empirical_policy
    if flow_run.idempotency_key and "job_variables" not in values:
        # Prefect's keyed create inserts every field as given, so unset job variables are null.
        values["job_variables"] = None
    if "created_by" in values:
        values["created_by"] = getattr(flow_run, "created_by", None)
    values["labels"] = _labels_with_system_labels(flow_run, parents)
    values["created"] = values["updated"] = now_utc()
    values.setdefault("id", uuid.uuid4())
    return values


def _labels_with_system_labels(flow_run: FlowRun | FlowRunCreate, parents: Parents) -> dict[str, Any]:
    """The deployment's (or flow's) labels, the system labels, then the run's own; later keys win."""
    system: dict[str, Any] = {"prefect.flow.id": str(flow_run.flow_id)}
    if flow_run.deployment_id is not None:
        system["prefect.deployment.id"] = str(flow_run.deployment_id)
        inherited = parents.deployment_labels or {}
    else:
        inherited = parents.flow_labels or {}
    return {**inherited, **system, **(flow_run.labels or {})}


def read_flow_run(
    session: Session, flow_run_id: uuid.UUID, for_update: bool = False
) -> orm.FlowRun | None:
    """The run with its current state and work queue, or None. `for_update` locks the row."""
    statement = sa.select(orm.FlowRun).where(orm.FlowRun.id == flow_run_id)
    if for_update:
        statement = statement.with_for_update(of=orm.FlowRun).execution_options(populate_existing=True)
    return session.execute(statement).unique().scalar_one_or_none()


def update_flow_run(session: Session, flow_run_id: uuid.UUID, flow_run: FlowRunUpdate) -> bool:
    """Write only the fields the caller set, and `updated` (even when none is set, as Prefect's
    UPDATE does); True if the run exists. No orchestration; the row is locked by the UPDATE."""
    values = flow_run.model_dump(exclude_unset=True)
    if "empirical_policy" in values:
        values["empirical_policy"] = flow_run.empirical_policy
    values["updated"] = now_utc()
    result = session.execute(
        sa.update(orm.FlowRun).where(orm.FlowRun.id == flow_run_id).values(**values)
    )
    return result.rowcount > 0


def ensure_job_variables_may_change(
    session: Session, flow_run_id: uuid.UUID, job_variables: dict[str, Any] | None = None
) -> bool:
    """Prefect's API rule for a change of `job_variables`: only a SCHEDULED run of an existing
    deployment, and the variables (over the deployment's and the pool's defaults) must satisfy the
    work pool's variables schema (`models.job_variables`). Locks the run (no transition slips in
    before the update); False for an unknown run; otherwise `ValidationError` naming
    `flow_run.job_variables` unless the change may go on."""
    row = session.execute(
        sa.select(orm.FlowRun.state_type, orm.FlowRun.deployment_id, orm.Deployment.id,
                  orm.Deployment.job_variables, orm.WorkPool.base_job_template)
        .outerjoin(orm.Deployment, orm.Deployment.id == orm.FlowRun.deployment_id)
        .outerjoin(orm.WorkQueue, orm.WorkQueue.id == orm.Deployment.work_queue_id)
        .outerjoin(orm.WorkPool, orm.WorkPool.id == orm.WorkQueue.work_pool_id)
        .where(orm.FlowRun.id == flow_run_id)
        .with_for_update(of=orm.FlowRun)
    ).first()
    if row is None:
        return False
    state_type, deployment_id, deployment_found, deployment_variables, base_job_template = row
    if state_type is None:
        problem = "Flow run state is required to update job variables but none exists"
    elif state_type != StateType.SCHEDULED:
        problem = f"Job variables for a flow run in state {StateType(state_type).name} cannot be updated"
    elif deployment_id is None or deployment_found is None:
        problem = "A deployment for the flow run could not be found"
    else:
        check_job_variables(base_job_template, deployment_variables, job_variables)
        return True
    raise ValidationError(f"flow_run.job_variables: {problem}")


def delete_flow_run(session: Session, flow_run_id: uuid.UUID) -> bool:
    """Delete the run, its states and task runs, releasing any slot it holds; False if unknown.

    The DELETE takes the run's row lock (waiting for a transition in flight), so the release that
    follows, a statement of its own, sees every holding committed before it.
    """
    if session.autoflush:
        session.flush()
    deleted = session.connection().execute(_delete_run_statement(), {"run_id": flow_run_id}).first()
    if deleted is None:
        return False
    cleanup_flow_run_concurrency_slots(session, flow_run_id)
    instance = held_instance(session, orm.FlowRun, flow_run_id)
    if instance is not None:
        session.expunge(instance)
    return True


def delete_flow_runs(session: Session, flow_run_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Delete each of these runs that exists, as `delete_flow_run` does; the ids deleted."""
    return [run_id for run_id in dict.fromkeys(flow_run_ids) if delete_flow_run(session, run_id)]


def with_system_labels_for_flow_run(session: Session, flow_run: FlowRun | FlowRunCreate) -> dict[str, Any]:
    """The labels a run created from `flow_run` gets: its deployment's (or flow's), the system
    labels, then its own."""
    return _labels_with_system_labels(flow_run, read_parents(session, ParentIds(flow_run.flow_id, flow_run.deployment_id)))


def update_flow_run_labels(session: Session, flow_run_id: uuid.UUID, labels: dict[str, Any]) -> bool:
    """Merge `labels` into the run's (given keys win). `ObjectNotFoundError` for an unknown run."""
    run = session.execute(
        sa.select(orm.FlowRun.labels).where(orm.FlowRun.id == flow_run_id).with_for_update()
    ).first()
    if run is None:
        raise ObjectNotFoundError(f"flow_run_id: no flow run with id {flow_run_id}")
    merged = {**(run.labels or {}), **labels}
    result = session.execute(
        sa.update(orm.FlowRun).where(orm.FlowRun.id == flow_run_id).values(labels=merged, updated=now_utc())
    )
    if (instance := held_instance(session, orm.FlowRun, flow_run_id)) is not None:
        session.expire(instance, ["labels", "updated"])
    return result.rowcount > 0


@functools.cache
def _delete_run_statement() -> sa.Delete:
    runs: sa.Table = orm.FlowRun.__table__  # type: ignore[assignment]
    return sa.delete(runs).where(runs.c.id == sa.bindparam("run_id")).returning(runs.c.id)


def set_flow_run_state(
    session: Session,
    flow_run_id: uuid.UUID,
    state: Any,
    force: bool = False,
    flow_policy: Any = None,
    orchestration_parameters: dict[str, Any] | None = None,
    client_version: str | None = None,
) -> OrchestrationResult:
    """Propose a state for the run; the policy decides what is written.

    `state` is a `State`, `StateCreate` or dict. The minimal policy applies when `force` is set or
    no policy is given. Raises `ObjectNotFoundError` for an unknown run; a rule's error is
    re-raised. The run is read without a lock and the write applies only if it has not moved on
    since (otherwise it is read and decided again), so history stays linear and no lock is held
    while the rules run (`orchestration.service`).
    """
    transition = transition_service().set_flow_run_state(
        session, flow_run_id, state, force=force, flow_policy=flow_policy,
        orchestration_parameters=orchestration_parameters, client_version=client_version,
    )
    assert transition.result is not None
    return transition.result


def cleanup_flow_run_concurrency_slots(session: Session, flow_run: Any) -> None:
    """Release the slot the run holds, if any; idempotent, and safe when the run is gone.

    `flow_run` is the ORM run, a schema with `.id`, or the run's id. The holding record is the
    proof of acquisition: a run that never secured a slot releases nothing.
    """
    from models.concurrency_slots import release_flow_run_slots

    release_flow_run_slots(session, getattr(flow_run, "id", flow_run))
