"""Response shapes: orchestration results, the REST flow-run response, dependencies."""

import datetime
import enum
from typing import Annotated, Any, Literal, Union
from uuid import UUID

import sqlalchemy as sa
from pydantic import Field

from models.schemas.base import DateTime, FlowrunsModel
from models.schemas.core import FlowRun, TaskInput
from models.schemas.states import State


class SetStateStatus(str, enum.Enum):
    ACCEPT = "ACCEPT"
    REJECT = "REJECT"
    ABORT = "ABORT"
    WAIT = "WAIT"


class StateAcceptDetails(FlowrunsModel):
    type: Literal["accept_details"] = "accept_details"


class StateRejectDetails(FlowrunsModel):
    type: Literal["reject_details"] = "reject_details"
    reason: str | None = None


class StateAbortDetails(FlowrunsModel):
    type: Literal["abort_details"] = "abort_details"
    reason: str | None = None


class StateWaitDetails(FlowrunsModel):
    type: Literal["wait_details"] = "wait_details"
    delay_seconds: int
    reason: str | None = None


StateResponseDetails = Annotated[
    Union[StateAcceptDetails, StateWaitDetails, StateRejectDetails, StateAbortDetails],
    Field(discriminator="type"),
]


class OrchestrationResult(FlowrunsModel):
    state: State | None = None
    status: SetStateStatus
    details: StateResponseDetails


class FlowRunResponse(FlowRun):
    work_pool_id: UUID | None = None
    work_pool_name: str | None = None

    @classmethod
    def from_orm_run(cls, run: Any) -> "FlowRunResponse":
        """The REST shape of an ORM run: its queue's name and pool come from the loaded queue row."""
        response = cls.model_validate(_attribute_values(run), from_attributes=True)
        queue = getattr(run, "work_queue", None)
        if queue is not None:
            response.work_queue_name = queue.name
            response.work_pool_id = queue.work_pool_id
            response.work_pool_name = queue.work_pool.name if queue.work_pool is not None else None
        return response


class DependencyResult(FlowrunsModel):
    id: UUID
    name: str
    upstream_dependencies: list[TaskInput]
    state: State | None = None
    expected_start_time: DateTime | None = None
    start_time: DateTime | None = None
    end_time: DateTime | None = None
    total_run_time: datetime.timedelta | None = None
    estimated_run_time: datetime.timedelta | None = None
    untrackable_result: bool


_RUN_ATTRIBUTES = tuple(
    name for name in FlowRunResponse.model_fields if name not in ("work_pool_id", "work_pool_name")
)
_STATE_ATTRIBUTES = tuple(State.model_fields)


def _attribute_values(run: Any) -> Any:
    """What `from_attributes` validation reads from an ORM run, as a dict: loaded values are
    taken from the instance's dict (no attribute instrumentation per field, which costs more than
    validating them), anything else (a property, an unloaded column) through `getattr`."""
    values = _loaded(run, _RUN_ATTRIBUTES)
    if values is None:
        return run  # not an ORM instance: validated from its attributes
    state = values["state"]
    if state is not None:
        values["state"] = _loaded(state, _STATE_ATTRIBUTES) or state
    return values


def _loaded(instance: Any, names: tuple[str, ...]) -> dict[str, Any] | None:
    inspected = sa.inspect(instance, raiseerr=False)
    if inspected is None or not hasattr(inspected, "dict"):
        return None
    loaded = inspected.dict
    return {name: loaded[name] if name in loaded else getattr(instance, name) for name in names}
