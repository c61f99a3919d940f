"""Response shapes: orchestration results, the REST flow-run response, dependencies."""

import datetime
import enum
from typing import Annotated, Any, Literal, Union
from uuid import UUID

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
        response = cls.model_validate(run, from_attributes=True)
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
