"""Core read schemas: flows, runs, deployments, pools, queues, limits."""

import datetime
import enum
from typing import Annotated, Any, Literal, Union
from uuid import UUID

from pydantic import BaseModel, Field, field_validator, model_validator

from models.schemas.base import DateTime, FlowrunsModel, ORMModel, TimeSeriesModel, default_name
from models.schemas.states import State, StateType
from models.settings import get_settings

KeyValueLabels = dict[str, Union[bool, int, float, str]]


def backfill_deprecated_retry_fields(values: Any) -> Any:
    """Prefect's legacy `max_retries`/`retry_delay_seconds` fill the new fields when those are empty."""
    if not isinstance(values, dict):
        return values
    values = dict(values)
    if not values.get("retries") and values.get("max_retries", 0) != 0:
        values["retries"] = values["max_retries"]
    if not values.get("retry_delay") and values.get("retry_delay_seconds", 0) != 0:
        values["retry_delay"] = values["retry_delay_seconds"]
    return values


class Flow(ORMModel):
    id: UUID | None = None
    name: str
    tags: list[str] = Field(default_factory=list)
    labels: KeyValueLabels | None = Field(default_factory=dict)


class FlowRunPolicy(FlowrunsModel):
    max_retries: int = 0
    retry_delay_seconds: float = 0
    retries: int | None = None
    retry_delay: int | None = None
    pause_keys: set[str] | None = Field(default_factory=set)
    resuming: bool | None = False
    retry_type: Literal["in_process", "reschedule"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _populate_deprecated_fields(cls, values: Any) -> Any:
        return backfill_deprecated_retry_fields(values)


class TaskRunPolicy(FlowrunsModel):
    max_retries: int = 0
    retry_delay_seconds: float = 0
    retries: int | None = None
    retry_delay: int | float | list[int] | list[float] | None = None
    retry_jitter_factor: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _populate_deprecated_fields(cls, values: Any) -> Any:
        return backfill_deprecated_retry_fields(values)

    @field_validator("retry_delay")
    @classmethod
    def _at_most_50_delays(cls, value: Any) -> Any:
        if isinstance(value, list) and len(value) > 50:
            raise ValueError("Can not configure more than 50 retry delays per task.")
        return value

    @field_validator("retry_jitter_factor")
    @classmethod
    def _not_negative(cls, value: float | None) -> float | None:
        if value is not None and value < 0:
            raise ValueError("`retry_jitter_factor` must be >= 0.")
        return value


class CreatedBy(BaseModel):
    id: UUID | None = None
    type: str | None = None
    display_value: str | None = None


class ConcurrencyLimitStrategy(str, enum.Enum):
    ENQUEUE = "ENQUEUE"
    CANCEL_NEW = "CANCEL_NEW"


class ConcurrencyOptions(BaseModel):
    collision_strategy: ConcurrencyLimitStrategy
    grace_period_seconds: int | None = Field(default=None, ge=60, le=86400)


class RunInput(FlowrunsModel):
    model_config = {"frozen": True, "extra": "ignore"}
    input_type: str


class TaskRunResult(RunInput):
    input_type: Literal["task_run"] = "task_run"
    id: UUID


class FlowRunResult(RunInput):
    input_type: Literal["flow_run"] = "flow_run"
    id: UUID


class Parameter(RunInput):
    input_type: Literal["parameter"] = "parameter"
    name: str


class Constant(RunInput):
    input_type: Literal["constant"] = "constant"
    type: str


TaskInput = Union[TaskRunResult, FlowRunResult, Parameter, Constant]
"""A plain union, as Prefect's: an input without `input_type` is whichever kind its fields fit."""
TaskInputs = dict[str, list[TaskInput]]


class RunTimes(FlowrunsModel):
    """Bookkeeping fields shared by flow runs and task runs, maintained by orchestration."""

    state_type: StateType | None = None
    state_name: str | None = None
    run_count: int = 0
    expected_start_time: DateTime | None = None
    next_scheduled_start_time: DateTime | None = None
    start_time: DateTime | None = None
    end_time: DateTime | None = None
    total_run_time: datetime.timedelta = datetime.timedelta(0)
    estimated_run_time: datetime.timedelta = datetime.timedelta(0)
    estimated_start_time_delta: datetime.timedelta = datetime.timedelta(0)


class FlowRun(RunTimes, ORMModel, TimeSeriesModel):
    name: str = Field(default_factory=lambda: default_name(None))
    flow_id: UUID
    state_id: UUID | None = None
    deployment_id: UUID | None = None
    deployment_version: str | None = None
    work_queue_name: str | None = None
    flow_version: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = None
    context: dict[str, Any] = Field(default_factory=dict)
    empirical_policy: FlowRunPolicy = Field(default_factory=FlowRunPolicy)
    tags: list[str] = Field(default_factory=list)
    labels: KeyValueLabels | None = Field(default_factory=dict)
    parent_task_run_id: UUID | None = None
    auto_scheduled: bool = False
    infrastructure_document_id: UUID | None = None
    infrastructure_pid: str | None = None
    created_by: CreatedBy | None = None
    work_queue_id: UUID | None = None
    state: State | None = None
    job_variables: dict[str, Any] | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        return default_name(value)

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, FlowRun):
            return NotImplemented
        ignored = {"estimated_run_time", "estimated_start_time_delta"}
        return self.model_dump(exclude=ignored) == other.model_dump(exclude=ignored)


class TaskRun(RunTimes, ORMModel, TimeSeriesModel):
    name: str = Field(default_factory=lambda: default_name(None))
    flow_run_id: UUID | None = None
    task_key: str
    dynamic_key: str
    cache_key: str | None = None
    cache_expiration: DateTime | None = None
    task_version: str | None = None
    empirical_policy: TaskRunPolicy = Field(default_factory=TaskRunPolicy)
    tags: list[str] = Field(default_factory=list)
    labels: KeyValueLabels | None = Field(default_factory=dict)
    state_id: UUID | None = None
    task_inputs: TaskInputs = Field(default_factory=dict)
    flow_run_run_count: int = 0
    state: State | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        return default_name(value)

    @field_validator("cache_key")
    @classmethod
    def _cache_key_fits(cls, cache_key: str | None) -> str | None:
        return cache_key_of_allowed_length(cache_key)


def cache_key_of_allowed_length(cache_key: str | None) -> str | None:
    """Prefect's bound on a task run's cache key: `FLOWRUNS_MAX_CACHE_KEY_LENGTH` characters."""
    longest = get_settings().max_cache_key_length
    if cache_key and len(cache_key) > longest:
        raise ValueError(f"Cache key exceeded maximum allowed length of {longest} characters.")
    return cache_key


class GlobalConcurrencyLimit(FlowrunsModel):
    """A deployment's slot pool as the deployment read returns it."""

    model_config = {"from_attributes": True, "extra": "ignore"}
    id: UUID
    created: DateTime | None = None
    updated: DateTime | None = None
    name: str
    limit: int
    active: bool = True
    active_slots: int = 0
    slot_decay_per_second: float = 0.0


class Deployment(ORMModel):
    id: UUID | None = None
    name: str
    version: str | None = None
    description: str | None = None
    flow_id: UUID
    paused: bool = False
    concurrency_limit: int | None = None
    concurrency_limit_id: UUID | None = None
    global_concurrency_limit: GlobalConcurrencyLimit | None = None
    concurrency_options: ConcurrencyOptions | None = None
    job_variables: dict[str, Any] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    labels: KeyValueLabels | None = Field(default_factory=dict)
    work_queue_name: str | None = None
    work_queue_id: UUID | None = None
    work_pool_name: str | None = None
    path: str | None = None
    entrypoint: str | None = None
    enforce_parameter_schema: bool = True
    created_by: CreatedBy | None = None
    # Prefect's response fields for what flowruns does not keep (schedules, workers polling,
    # storage and pull steps): present, with the values a deployment nobody polls has there.
    schedules: list[dict[str, Any]] = Field(default_factory=list)
    last_polled: DateTime | None = None
    status: Literal["READY", "NOT_READY"] = "NOT_READY"
    parameter_openapi_schema: dict[str, Any] | None = None
    pull_steps: list[dict[str, Any]] | None = None
    storage_document_id: UUID | None = None
    infrastructure_document_id: UUID | None = None
    updated_by: CreatedBy | None = None


class ConcurrencyLimitV2(ORMModel):
    id: UUID | None = None
    active: bool = True
    name: str
    limit: int
    active_slots: int = 0
    denied_slots: int = 0
    slot_decay_per_second: float = 0.0
    avg_slot_occupancy_seconds: float = 2.0


class _ActiveSlots(BaseModel):
    """Prefect's `active_slots` of a pool or queue response: 0 with a concurrency limit, None
    without one. flowruns answers with a pool or queue only as it creates it, when nothing
    occupies it yet."""

    active_slots: int | None = None

    @model_validator(mode="after")
    def _none_occupied_yet(self) -> "_ActiveSlots":
        if self.active_slots is None and getattr(self, "concurrency_limit", None) is not None:
            self.active_slots = 0
        return self


class WorkPool(ORMModel, _ActiveSlots):
    id: UUID | None = None
    name: str
    description: str | None = None
    type: str
    base_job_template: dict[str, Any] = Field(default_factory=dict)
    is_paused: bool = False
    concurrency_limit: int | None = Field(default=None, ge=0)
    status: str | None = None
    default_queue_id: UUID | None = None


class WorkQueue(ORMModel, _ActiveSlots):
    id: UUID | None = None
    name: str
    description: str | None = ""
    is_paused: bool = False
    concurrency_limit: int | None = Field(default=None, ge=0)
    priority: int = 1
    work_pool_id: UUID | None = None
    work_pool_name: str | None = None
    last_polled: DateTime | None = None
    status: str | None = None
    filter: dict[str, Any] | None = None
    """Prefect's deprecated queue filter: always null here."""
