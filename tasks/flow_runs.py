"""The `flow_runs.*` tasks: thin adapters over `models.flow_runs`."""

import uuid
from typing import Any

from pydantic import Field, field_validator
from sqlalchemy.orm import Session

from models import flow_runs
from models.concurrency_slots import release_slots_of_inactive_run
from models.errors import ObjectNotFoundError
from models.flow_run_queries import count_matching_flow_runs, read_flow_run_json
from models.schemas.actions import FlowRunCreate, FlowRunUpdate, StateCreate
from models.schemas.base import INT64_MAX, ActionModel, DateTime
from models.schemas.filters import FlowRunFilters
from models.schemas.graph import Graph
from models.schemas.responses import DependencyResult, FlowRunJson, FlowRunResponse
from models.schemas.sorting import FlowRunSort
from models.schemas.states import StateType, keeps_deployment_slot
from models.settings import get_settings
from orchestration import CoreFlowPolicy, service
from orchestration.service import Inbox, Transition
from tasks.base import (
    FollowUp,
    StatementPath,
    flowruns_task,
    follow_up_id,
    transition_task,
)

CLEANUP = "flow_runs.cleanup_flow_run_concurrency_slots"
TRANSITION_ID_NAMESPACE = uuid.UUID("0f3a4c1e-8d2b-4b6e-9a57-3c1d2e4f5a60")
"""A task id that is not a UUID becomes a transition id by UUIDv5 in this namespace."""


class FlowRunId(ActionModel):
    flow_run_id: uuid.UUID


class CreateFlowRun(ActionModel):
    flow_run: FlowRunCreate


class UpdateFlowRun(ActionModel):
    flow_run_id: uuid.UUID
    flow_run: FlowRunUpdate


class SetFlowRunState(ActionModel):
    flow_run_id: uuid.UUID
    state: StateCreate
    force: bool = False


class CountFlowRuns(FlowRunFilters):
    pass  # the six filters, under the task's own name in the contract


class ReadFlowRuns(CountFlowRuns):
    offset: int = Field(default=0, ge=0, le=INT64_MAX)
    limit: int | None = Field(default=None, validate_default=True)
    sort: FlowRunSort = FlowRunSort.ID_DESC

    @field_validator("offset")
    @classmethod
    def _bounded_offset(cls, offset: int) -> int:
        """A read skips `offset` rows one by one: past a bound, page with a filter instead."""
        maximum = get_settings().max_read_offset
        if offset > maximum:
            raise ValueError(f"must be at most {maximum} (FLOWRUNS_MAX_READ_OFFSET); narrow the filters to page further")
        return offset

    @field_validator("limit")
    @classmethod
    def _at_most_one_page(cls, limit: int | None) -> int:
        """Prefect's API: at most (and by default) `api_default_limit` runs per call."""
        maximum = get_settings().api_default_limit
        if limit is None:
            return maximum
        if not 0 <= limit <= maximum:
            raise ValueError(f"must be between 0 and {maximum}")
        return limit


class ReadFlowRunGraph(FlowRunId):
    since: DateTime | None = None


class CleanupSlots(FlowRunId):
    only_if_inactive: bool = False
    """Release only if the run is gone or not PENDING, RUNNING or CANCELLING (the follow-ups'
    mode: a run that secured a slot again since the follow-up was sent keeps it)."""


def cleanup_follow_up(flow_run_id: uuid.UUID, task_id: str, slots_released: int | None) -> list[FollowUp]:
    """After a run released its slot (or, on a replay, may have): a retried safety net that releases
    whatever the run, no longer active, still holds. Runs that held no slot need none."""
    if slots_released == 0:
        return []
    kwargs = {"flow_run_id": str(flow_run_id), "only_if_inactive": True}
    return [FollowUp(CLEANUP, kwargs, follow_up_id(task_id, CLEANUP))]


def _after_set_state(
    body: SetFlowRunState, outcome: dict[str, Any], task_id: str, slots_released: int | None
) -> list[FollowUp]:
    """A transition that gave a slot back (a replay: one that ended in a state keeping none) is
    followed by the cleanup safety net."""
    if slots_released is None:
        state = outcome.get("state") or {}
        details = state.get("state_details") or {}
        if keeps_deployment_slot(state.get("type"), state.get("name"), bool(details.get("pause_reschedule"))):
            return []
    return cleanup_follow_up(body.flow_run_id, task_id, slots_released)


def _after_delete(body: FlowRunId, deleted: bool, task_id: str, slots_released: int | None) -> list[FollowUp]:
    return cleanup_follow_up(body.flow_run_id, task_id, slots_released) if deleted else []


def transition_id_for(task_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(task_id)
    except ValueError:
        return uuid.uuid5(TRANSITION_ID_NAMESPACE, task_id)


def _with_a_state(flow_run: FlowRunCreate) -> FlowRunCreate:
    """Without a state, a run starts PENDING, forced (as the REST endpoint)."""
    if flow_run.state is not None:
        return flow_run
    return flow_run.model_copy(update={"state": StateCreate(type=StateType.PENDING)})


def _create_in_two_statements(session: Session, body: CreateFlowRun, inbox: Inbox) -> Transition:
    return service.create_flow_run(session, _with_a_state(body.flow_run), inbox)


@flowruns_task("flow_runs.create_flow_run", CreateFlowRun, recorded=True, statements=StatementPath(
    lambda body: service.creatable_in_two_statements(body.flow_run), _create_in_two_statements))
def create_flow_run(session: Session, body: CreateFlowRun, task_id: str) -> FlowRunResponse:
    """Create a run; without a state it starts PENDING, forced (as the REST endpoint)."""
    run = flow_runs.create_flow_run(session, _with_a_state(body.flow_run))
    return FlowRunResponse.from_orm_run(run)


@flowruns_task("flow_runs.read_flow_run", FlowRunId, recorded=False)
def read_flow_run(session: Session, body: FlowRunId, task_id: str) -> FlowRunResponse:
    """The run with its current state; ObjectNotFoundError for an unknown id."""
    run = flow_runs.read_flow_run(session, body.flow_run_id)
    if run is None:
        raise ObjectNotFoundError(f"flow_run_id: no flow run with id {body.flow_run_id}")
    return FlowRunResponse.from_orm_run(run)


@flowruns_task("flow_runs.read_flow_runs", ReadFlowRuns, recorded=False)
def read_flow_runs(session: Session, body: ReadFlowRuns, task_id: str) -> list[FlowRunJson]:
    """A page (at most 200) of the runs the filters select, in the sort's order."""
    return read_flow_run_json(session, body, offset=body.offset, limit=body.limit, sort=body.sort)


@flowruns_task("flow_runs.count_flow_runs", CountFlowRuns, recorded=False)
def count_flow_runs(session: Session, body: CountFlowRuns, task_id: str) -> int:
    """How many runs the filters select."""
    return count_matching_flow_runs(session, body)


@flowruns_task("flow_runs.update_flow_run", UpdateFlowRun, recorded=True)
def update_flow_run(session: Session, body: UpdateFlowRun, task_id: str) -> bool:
    """Write the fields the request set; false for an unknown run. Job variables change only on a
    SCHEDULED run of a deployment, and must satisfy its work pool's variables schema (Prefect's
    API rules)."""
    if body.flow_run.job_variables is not None and not flow_runs.ensure_job_variables_may_change(
        session, body.flow_run_id, body.flow_run.job_variables
    ):
        return False
    return flow_runs.update_flow_run(session, body.flow_run_id, body.flow_run)


@transition_task("flow_runs.set_flow_run_state", SetFlowRunState, follow_ups=_after_set_state)
def set_flow_run_state(session: Session, body: SetFlowRunState, inbox: Inbox) -> Transition:
    """Propose the state through the core policy (minimal when forced); the task id is the
    transition id unless the request carries one."""
    state = body.state
    if state.state_details.transition_id is None:
        details = state.state_details.model_copy(update={"transition_id": transition_id_for(inbox.task_id)})
        state = state.model_copy(update={"state_details": details})
    return service.set_flow_run_state(
        session, body.flow_run_id, state, force=body.force, flow_policy=None if body.force else CoreFlowPolicy,
        inbox=inbox,
    )


@flowruns_task("flow_runs.delete_flow_run", FlowRunId, recorded=True, follow_ups=_after_delete)
def delete_flow_run(session: Session, body: FlowRunId, task_id: str) -> bool:
    """Delete the run (releasing its slot); false for an unknown run."""
    return flow_runs.delete_flow_run(session, body.flow_run_id)


@flowruns_task(CLEANUP, CleanupSlots, recorded=True)
def cleanup_flow_run_concurrency_slots(session: Session, body: CleanupSlots, task_id: str) -> None:
    """Release the slot the run holds, if any; a no-op for a run that holds none or is gone."""
    if body.only_if_inactive:
        release_slots_of_inactive_run(session, body.flow_run_id)
    else:
        flow_runs.cleanup_flow_run_concurrency_slots(session, body.flow_run_id)


@flowruns_task("flow_runs.read_task_run_dependencies", FlowRunId, recorded=False)
def read_task_run_dependencies(session: Session, body: FlowRunId, task_id: str) -> list[DependencyResult]:
    """Each task run of the run with the task runs it waited on (upstream) and its inputs."""
    return flow_runs.read_task_run_dependencies(session, body.flow_run_id)


@flowruns_task("flow_runs.read_flow_run_graph", ReadFlowRunGraph, recorded=False)
def read_flow_run_graph(session: Session, body: ReadFlowRunGraph, task_id: str) -> Graph:
    """The run's graph of task runs and subflows (nodes changed since `since`, when given)."""
    if body.since is None:
        return flow_runs.read_flow_run_graph(session, body.flow_run_id)
    return flow_runs.read_flow_run_graph(session, body.flow_run_id, since=body.since)

