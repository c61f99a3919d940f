"""Response shapes: orchestration results, the REST flow-run response, dependencies."""

import datetime
import enum
from typing import Annotated, Any, Literal, Self, Union
from uuid import UUID

from pydantic import Field, GetCoreSchemaHandler, field_validator
from pydantic_core import core_schema
from sqlalchemy.orm.attributes import instance_state
from sqlalchemy.orm.exc import NO_STATE

from models.schemas.base import DateTime, FlowrunsModel, ModelT
from models.schemas.core import CreatedBy, FlowRun, FlowRunPolicy, TaskInput
from models.schemas.states import State, StateDetails, StateType


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

    @field_validator("labels", mode="before")
    @classmethod
    def _no_labels_as_empty(cls, labels: Any) -> Any:
        """A response always carries labels: none read as `{}`, as Prefect's response does."""
        return {} if labels is None else labels

    @classmethod
    def model_validate(cls, obj: Any, **options: Any) -> Self:
        """As pydantic's; validated from an ORM run's attributes, the queue's name and pool come
        from its queue row, as Prefect's response does."""
        response = super().model_validate(obj, **options)
        if options.get("from_attributes") and not isinstance(obj, dict):
            response._take_work_queue_of(obj)
        return response

    @classmethod
    def from_orm_run(cls, run: Any) -> "FlowRunResponse":
        """The REST shape of an ORM run: its queue's name and pool come from the loaded queue row."""
        values = _run_values(run)
        if values is None:
            return cls.model_validate(run, from_attributes=True)
        response = cls.from_run_values(values)
        response._take_work_queue_of(run)
        return response

    def _take_work_queue_of(self, run: Any) -> None:
        queue = getattr(run, "work_queue", None)
        if queue is not None:
            pool_name = queue.work_pool.name if queue.work_pool is not None else None
            self.set_work_queue(queue.name, queue.work_pool_id, pool_name)

    @classmethod
    def from_run_values(cls, values: dict[str, Any]) -> "FlowRunResponse":
        """The response for a run's values as read from the database: every field but the pool's,
        in field order, with `state` the state's values as a dict (or None). They are taken as
        they are where validation would keep them unchanged (the usual case), validated where it
        would fill something in. The response takes over `values` and the state's dict."""
        if _as_validation_keeps_them(values):
            return _construct_run(cls, values)
        return cls.model_validate(values, from_attributes=True)

    def set_work_queue(self, name: str, work_pool_id: UUID, work_pool_name: str | None) -> None:
        """The run's queue name and pool, as its queue row has them."""
        self.work_queue_name = name
        self.work_pool_id = work_pool_id
        self.work_pool_name = work_pool_name


class FlowRunJson(dict[str, Any]):
    """A `FlowRunResponse` already in its JSON form (`model_dump(mode="json")`), as a read builds it
    without the model. Its schema (the contract's) is the response's."""

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return handler(FlowRunResponse)


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


RUN_FIELDS = tuple(
    name for name in FlowRunResponse.model_fields if name not in ("work_pool_id", "work_pool_name")
)
"""The fields `FlowRunResponse.from_run_values` takes, in field order."""
STATE_FIELDS = tuple(State.model_fields)
_COPIED_CONTAINERS = ("parameters", "context", "tags", "labels", "job_variables")
"""The run's lists and dicts, copied as validation copies them: the response shares none with the row."""


def _run_values(run: Any) -> dict[str, Any] | None:
    """What `from_attributes` validation reads from an ORM run, as a dict; None if not an ORM run."""
    values = _loaded(run, RUN_FIELDS)
    if values is not None and values["state"] is not None:
        values["state"] = _loaded(values["state"], STATE_FIELDS) or values["state"]
    return values


def _loaded(instance: Any, names: tuple[str, ...]) -> dict[str, Any] | None:
    """Loaded values straight from the instance's dict (attribute instrumentation per field costs
    more than validating them), anything else (a property, an unloaded column) through `getattr`."""
    try:
        loaded = instance_state(instance).dict
    except NO_STATE:
        return None
    return {name: loaded[name] if name in loaded else getattr(instance, name) for name in names}


def _as_validation_keeps_them(values: dict[str, Any]) -> bool:
    """Whether validation would return these values unchanged: no default to fill in (a name, a
    Scheduled state's time) and the nested models already models, as the column types load them."""
    state = values["state"]
    if state is not None:
        if not isinstance(state, dict) or not state["name"]:
            return False
        details = state["state_details"]
        if not isinstance(details, StateDetails) or not isinstance(state["type"], StateType):
            return False
        if state["type"] is StateType.SCHEDULED and not details.scheduled_time:
            return False
    return (
        bool(values["name"])
        and values["labels"] is not None
        and isinstance(values["empirical_policy"], FlowRunPolicy)
        and (values["created_by"] is None or isinstance(values["created_by"], CreatedBy))
    )


def _construct_run(cls: type["FlowRunResponse"], values: dict[str, Any]) -> "FlowRunResponse":
    for name in _COPIED_CONTAINERS:
        if values[name] is not None:
            values[name] = values[name].copy()
    if values["state"] is not None:
        values["state"] = _construct(State, values["state"], set(STATE_FIELDS))
    values["work_pool_id"] = values["work_pool_name"] = None
    # Validation sets what it was given: every field but the pool's, set from the queue if any.
    return _construct(cls, values, set(RUN_FIELDS))


def _construct(model: type[ModelT], values: dict[str, Any], fields_set: set[str]) -> ModelT:
    """`model.model_construct(fields_set, **values)` for values of every field in field order,
    without its per-field loop (which costs more than validation). For models without private
    attributes or `model_post_init`."""
    instance = model.__new__(model)
    object.__setattr__(instance, "__dict__", values)
    object.__setattr__(instance, "__pydantic_fields_set__", fields_set)
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", None)
    return instance
