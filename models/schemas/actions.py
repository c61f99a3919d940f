"""Request bodies: strict (unknown fields refused), with Prefect's field names."""

import json
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, Field, field_validator, model_validator

from models.schemas.base import INT32_MAX, ActionModel, DateTime, default_name
from models.schemas.core import (
    ConcurrencyOptions,
    FlowRunPolicy,
    KeyValueLabels,
    TaskInputs,
    TaskRunPolicy,
)
from models.schemas.states import StateDefaults, StateDetails, StateType
from models.settings import get_settings


def _check_parameter_size(parameters: dict[str, Any]) -> dict[str, Any]:
    limit = get_settings().max_parameter_size_bytes
    if limit:
        size = len(json.dumps(parameters, default=str).encode())
        if size > limit:
            raise ValueError(f"parameters are {size} bytes, over the limit of {limit} bytes")
    return parameters


SizedParameters = Annotated[dict[str, Any], AfterValidator(_check_parameter_size)]


class StateCreate(StateDefaults, ActionModel):
    type: StateType
    name: str | None = None
    message: str | None = None
    data: Any | None = None
    state_details: StateDetails = Field(default_factory=StateDetails)


class FlowCreate(ActionModel):
    name: str = Field(min_length=1)
    tags: list[str] = Field(default_factory=list)
    labels: KeyValueLabels | None = Field(default_factory=dict)


class FlowRunCreate(ActionModel):
    state: StateCreate | None = None
    name: str = Field(default_factory=lambda: default_name(None))
    flow_id: UUID
    flow_version: str | None = None
    parameters: SizedParameters = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)
    parent_task_run_id: UUID | None = None
    infrastructure_document_id: UUID | None = None
    empirical_policy: FlowRunPolicy = Field(default_factory=FlowRunPolicy)
    tags: list[str] = Field(default_factory=list)
    labels: KeyValueLabels | None = Field(default_factory=dict)
    idempotency_key: str | None = None
    work_pool_name: str | None = None
    work_queue_name: str | None = None
    job_variables: dict[str, Any] | None = None
    deployment_id: UUID | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        return default_name(value)


class FlowRunUpdate(ActionModel):
    """Only the fields a caller sets are written."""

    name: str | None = None
    flow_version: str | None = None
    parameters: SizedParameters = Field(default_factory=dict)
    empirical_policy: FlowRunPolicy = Field(default_factory=FlowRunPolicy)
    tags: list[str] = Field(default_factory=list)
    infrastructure_pid: str | None = None
    job_variables: dict[str, Any] | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        return default_name(value)


class DeploymentCreate(ActionModel):
    name: str = Field(min_length=1)
    flow_id: UUID
    paused: bool = False
    concurrency_limit: int | None = Field(default=None, ge=1, le=INT32_MAX)
    concurrency_options: ConcurrencyOptions | None = None
    global_concurrency_limit_id: UUID | None = None
    enforce_parameter_schema: bool = True
    parameters: SizedParameters = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    labels: KeyValueLabels | None = Field(default_factory=dict)
    work_queue_name: str | None = None
    work_pool_name: str | None = None
    infrastructure_document_id: UUID | None = None
    description: str | None = None
    path: str | None = None
    version: str | None = None
    entrypoint: str | None = None
    job_variables: dict[str, Any] = Field(default_factory=dict)


class WorkPoolCreate(ActionModel):
    name: str = Field(min_length=1)
    description: str | None = None
    type: str = "prefect-agent"
    base_job_template: dict[str, Any] = Field(default_factory=dict)
    is_paused: bool = False
    concurrency_limit: int | None = Field(default=None, ge=0, le=INT32_MAX)


class WorkQueueCreate(ActionModel):
    name: str = Field(min_length=1)
    description: str | None = ""
    is_paused: bool = False
    concurrency_limit: int | None = Field(default=None, ge=0, le=INT32_MAX)
    priority: int | None = Field(default=None, ge=1, le=INT32_MAX)
    work_pool_name: str | None = None


class TaskRunCreate(ActionModel):
    id: UUID | None = None
    state: StateCreate | None = None
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
    task_inputs: TaskInputs = Field(default_factory=dict)

    @field_validator("name", mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        return default_name(value)

    @model_validator(mode="after")
    def _cache_key_length(self) -> "TaskRunCreate":
        if self.cache_key is not None and len(self.cache_key) > 2000:
            raise ValueError("cache_key is longer than 2000 characters")
        return self
