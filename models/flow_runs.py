"""The flow-run model functions. Each takes the caller's session; none commits."""

import datetime
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.database import dialect_insert
from models.errors import ObjectNotFoundError
from models.flow_run_graph import read_flow_run_graph, read_task_run_dependencies
from models.flow_run_queries import count_flow_runs, read_flow_runs
from models.schemas.actions import FlowRunCreate, FlowRunUpdate
from models.schemas.core import FlowRun
from models.schemas.responses import OrchestrationResult
from models.types import now_utc
from models.work_queues import resolve_work_queue

__all__ = [
    "cleanup_flow_run_concurrency_slots",
    "count_flow_runs",
    "create_flow_run",
    "delete_flow_run",
    "read_flow_run",
    "read_flow_run_graph",
    "read_flow_runs",
    "read_task_run_dependencies",
    "set_flow_run_state",
    "update_flow_run",
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
    flow = session.get(orm.Flow, flow_run.flow_id)
    if flow is None:
        raise ObjectNotFoundError(f"flow_id: no flow with id {flow_run.flow_id}")
    deployment = None
    if flow_run.deployment_id is not None:
        deployment = session.get(orm.Deployment, flow_run.deployment_id)
        if deployment is None:
            raise ObjectNotFoundError(f"deployment_id: no deployment with id {flow_run.deployment_id}")

    now = now_utc()
    values = flow_run.model_dump(exclude_unset=True, exclude=_NOT_INSERTED)
    for required in ("name", "flow_id"):
        values[required] = getattr(flow_run, required)
    if isinstance(flow_run, FlowRunCreate):
        queue = resolve_work_queue(session, flow_run.work_pool_name, flow_run.work_queue_name)
        if queue is not None:
            values["work_queue_id"] = queue.id
            values["work_queue_name"] = queue.name
    if "empirical_policy" in values:
        values["empirical_policy"] = flow_run.empirical_policy
    if "created_by" in values:
        values["created_by"] = getattr(flow_run, "created_by", None)
    values["labels"] = _labels_with_system_labels(flow, deployment, flow_run.labels)
    values["created"] = values["updated"] = now
    values.setdefault("id", uuid.uuid4())

    if not flow_run.idempotency_key:
        run = orm.FlowRun(**values)
        session.add(run)
        session.flush()
        created = True
    else:
        inserted = session.execute(
            dialect_insert(session, orm.FlowRun)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["flow_id", "idempotency_key"])
            .returning(orm.FlowRun.id)
        ).scalar_one_or_none()
        created = inserted is not None
        run = session.execute(
            sa.select(orm.FlowRun)
            .where(
                orm.FlowRun.flow_id == flow_run.flow_id,
                orm.FlowRun.idempotency_key == flow_run.idempotency_key,
            )
            .execution_options(populate_existing=True)
        ).scalar_one()

    if created and flow_run.state is not None:
        set_flow_run_state(
            session, run.id, flow_run.state, force=True, orchestration_parameters=orchestration_parameters
        )
    return run


def _labels_with_system_labels(
    flow: orm.Flow, deployment: orm.Deployment | None, labels: dict[str, Any] | None
) -> dict[str, Any]:
    """The deployment's (or flow's) labels, the system labels, then the run's own; later keys win."""
    system: dict[str, Any] = {"prefect.flow.id": str(flow.id)}
    if deployment is not None:
        system["prefect.deployment.id"] = str(deployment.id)
        inherited = deployment.labels or {}
    else:
        inherited = flow.labels or {}
    return {**inherited, **system, **(labels or {})}


def read_flow_run(
    session: Session, flow_run_id: uuid.UUID, for_update: bool = False
) -> orm.FlowRun | None:
    """The run with its current state and work queue, or None. `for_update` locks the row."""
    statement = sa.select(orm.FlowRun).where(orm.FlowRun.id == flow_run_id)
    if for_update:
        statement = statement.with_for_update(of=orm.FlowRun).execution_options(populate_existing=True)
    return session.execute(statement).unique().scalar_one_or_none()


def update_flow_run(session: Session, flow_run_id: uuid.UUID, flow_run: FlowRunUpdate) -> bool:
    """Write only the fields the caller set; True if the run exists. No orchestration, no lock."""
    values = flow_run.model_dump(exclude_unset=True)
    if "empirical_policy" in values:
        values["empirical_policy"] = flow_run.empirical_policy
    if not values:
        return session.get(orm.FlowRun, flow_run_id) is not None
    values["updated"] = now_utc()
    result = session.execute(
        sa.update(orm.FlowRun).where(orm.FlowRun.id == flow_run_id).values(**values)
    )
    return result.rowcount > 0


def delete_flow_run(session: Session, flow_run_id: uuid.UUID) -> bool:
    """Delete the run, its states and task runs, releasing any slot it holds first."""
    run = read_flow_run(session, flow_run_id, for_update=True)
    if run is None:
        return False
    cleanup_flow_run_concurrency_slots(session, run)
    result = session.execute(
        sa.delete(orm.FlowRun).where(orm.FlowRun.id == flow_run_id).execution_options(synchronize_session=False)
    )
    session.expunge(run)
    return result.rowcount > 0


def set_flow_run_state(
    session: Session,
    flow_run_id: uuid.UUID,
    state: Any,
    force: bool = False,
    flow_policy: Any = None,
    orchestration_parameters: dict[str, Any] | None = None,
    client_version: str | None = None,
) -> OrchestrationResult:
    """Propose a state for the run under its row lock; the policy decides what is written.

    `state` is a `State`, `StateCreate` or dict; its timestamp is taken once the lock is held.
    The minimal policy applies when `force` is set or no policy is given. Raises
    `ObjectNotFoundError` for an unknown run; a rule's error is re-raised.
    """
    from orchestration.context import FlowOrchestrationContext, locked_current_state, proposed_state_from
    from orchestration.engine import orchestrate
    from orchestration.global_policy import GlobalFlowPolicy
    from orchestration.policies import MinimalFlowPolicy

    proposed = proposed_state_from(state)
    run = read_flow_run(session, flow_run_id, for_update=True)
    if run is None:
        raise ObjectNotFoundError(f"flow_run_id: no flow run with id {flow_run_id}")
    proposed.timestamp = now_utc()  # under the lock: history order is commit order
    context = FlowOrchestrationContext(
        session=session,
        run=run,
        initial_state=locked_current_state(session, run),
        proposed_state=proposed,
        parameters=dict(orchestration_parameters or {}),
        client_version=client_version,
    )
    policy = MinimalFlowPolicy if force or flow_policy is None else flow_policy
    return orchestrate(context, policy, GlobalFlowPolicy)


def cleanup_flow_run_concurrency_slots(session: Session, flow_run: Any) -> None:
    """Release the slot the run holds, if any; idempotent, and safe when the run is gone.

    `flow_run` is the ORM run, a schema with `.id`, or the run's id. The holding record is the
    proof of acquisition: a run that never secured a slot releases nothing.
    """
    from models.concurrency_slots import release_flow_run_slots

    release_flow_run_slots(session, getattr(flow_run, "id", flow_run))
