"""Request bodies: strict (unknown fields refused), with Prefect's field names."""

import json
import re
from typing import Annotated, Any
from uuid import UUID

from pydantic import BeforeValidator, Field, field_validator

from models.schemas.base import INT32_MAX, ActionModel, DateTime, default_name
from models.schemas.bounds import FitsAnIndex, JsonField, JsonObject, Labels, ShortText, SizedParameters, Tags
from models.schemas.core import (
    ConcurrencyOptions,
    FlowRunPolicy,
    TaskInputs,
    TaskRunPolicy,
    cache_key_of_allowed_length,
)
from models.schemas.states import StateDefaults, StateDetails, StateType

PLACEHOLDER = re.compile(r"{{\s*([\w.\-\[\]$]+)\s*}}")
"""A `{{ name }}` placeholder of a work pool's job configuration (the name as Prefect reads it)."""

NAME_FORBIDDEN_CHARACTERS = "/%&><"
"""Characters Prefect refuses in the names of flows, deployments, work pools and work queues."""
NAME_PATTERN = f"^[^{NAME_FORBIDDEN_CHARACTERS}]+$"

Name = Annotated[str, Field(pattern=NAME_PATTERN), FitsAnIndex]
"""A flow, deployment or work queue name: none of `NAME_FORBIDDEN_CHARACTERS`, index-sized."""


def _not_blank(value: Any) -> Any:
    if isinstance(value, str) and not value.strip("' \""):
        raise ValueError("a name must hold more than spaces and quotes")
    return value


NonBlankName = Annotated[Name, BeforeValidator(_not_blank)]
"""A work pool name: a `Name` that is more than spaces and quotes (Prefect's `NonEmptyishName`)."""


class StateCreate(StateDefaults, ActionModel):
    type: StateType
    name: ShortText | None = None
    message: str | None = None
    data: JsonField | None = None
    state_details: StateDetails = Field(default_factory=StateDetails)


class FlowCreate(ActionModel):
    name: Name = Field(min_length=1)
    tags: Tags = Field(default_factory=list)
    labels: Labels | None = Field(default_factory=dict)


class FlowRunCreate(ActionModel):
    state: StateCreate | None = None
    name: ShortText = Field(default_factory=lambda: default_name(None))
    flow_id: UUID
    flow_version: ShortText | None = None
    parameters: SizedParameters = Field(default_factory=dict)
    context: JsonObject = Field(default_factory=dict)
    parent_task_run_id: UUID | None = None
    infrastructure_document_id: UUID | None = None
    empirical_policy: FlowRunPolicy = Field(default_factory=FlowRunPolicy)
    tags: Tags = Field(default_factory=list)
    labels: Labels | None = Field(default_factory=dict)
    idempotency_key: ShortText | None = None
    work_pool_name: ShortText | None = None
    work_queue_name: ShortText | None = None
    job_variables: JsonObject | None = None
    deployment_id: UUID | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        return default_name(value)


class FlowRunUpdate(ActionModel):
    """Only the fields a caller sets are written."""

    name: ShortText | None = None
    flow_version: ShortText | None = None
    parameters: SizedParameters = Field(default_factory=dict)
    empirical_policy: FlowRunPolicy = Field(default_factory=FlowRunPolicy)
    tags: Tags = Field(default_factory=list)
    infrastructure_pid: ShortText | None = None
    job_variables: JsonObject | None = None

    @field_validator("name", mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        return default_name(value)


class DeploymentCreate(ActionModel):
    name: Name = Field(min_length=1)
    """Prefect's action schema takes any text, but its server builds the deployment as a model
    whose name refuses the same characters as a flow's: refused here, before anything is written."""
    flow_id: UUID
    paused: bool = False
    concurrency_limit: int | None = Field(default=None, ge=1, le=INT32_MAX)
    concurrency_options: ConcurrencyOptions | None = None
    global_concurrency_limit_id: UUID | None = None
    enforce_parameter_schema: bool = True
    parameters: SizedParameters = Field(default_factory=dict)
    tags: Tags = Field(default_factory=list)
    labels: Labels | None = Field(default_factory=dict)
    work_queue_name: Name | None = None
    """Created when the pool has no queue of that name, as Prefect does: so a queue's `Name` too."""
    work_pool_name: ShortText | None = None
    infrastructure_document_id: UUID | None = None
    description: str | None = None
    path: ShortText | None = None
    version: ShortText | None = None
    entrypoint: ShortText | None = None
    job_variables: JsonObject = Field(default_factory=dict)


class WorkPoolCreate(ActionModel):
    name: NonBlankName = Field(min_length=1)
    description: str | None = None
    type: ShortText = "prefect-agent"
    base_job_template: JsonObject = Field(default_factory=dict)
    is_paused: bool = False
    concurrency_limit: int | None = Field(default=None, ge=0, le=INT32_MAX)

    @field_validator("base_job_template")
    @classmethod
    def _every_placeholder_declared(cls, template: dict[str, Any]) -> dict[str, Any]:
        """Prefect's rule: a template, unless empty, has a `job_configuration` and a `variables`
        schema, and every `{{ name }}` in the configuration is one of the schema's properties."""
        if not template:
            return template
        configuration, variables = template.get("job_configuration"), template.get("variables")
        if not (configuration and variables):
            raise ValueError("The `base_job_template` must contain both a `job_configuration` key and a `variables` key.")
        if not isinstance(configuration, dict) or not isinstance(variables, dict):
            raise ValueError("`job_configuration` and `variables` must be JSON objects")
        used = {name for value in configuration.values() for name in PLACEHOLDER.findall(json.dumps(value))}
        undeclared = used - set(variables.get("properties") or {})
        if undeclared:
            raise ValueError(
                "The variables specified in the job configuration template must be present as properties in the "
                f"variables schema. Your job configuration uses the following undeclared variable(s): "
                f"{', '.join(sorted(undeclared))}."
            )
        return template


class WorkQueueCreate(ActionModel):
    name: Name = Field(min_length=1)
    description: str | None = ""
    is_paused: bool = False
    concurrency_limit: int | None = Field(default=None, ge=0, le=INT32_MAX)
    priority: int | None = Field(default=None, ge=1, le=INT32_MAX)
    work_pool_name: ShortText | None = None


class TaskRunCreate(ActionModel):
    id: UUID | None = None
    state: StateCreate | None = None
    name: ShortText = Field(default_factory=lambda: default_name(None))
    flow_run_id: UUID | None = None
    task_key: ShortText
    dynamic_key: ShortText
    cache_key: str | None = None
    cache_expiration: DateTime | None = None
    task_version: ShortText | None = None
    empirical_policy: TaskRunPolicy = Field(default_factory=TaskRunPolicy)
    tags: Tags = Field(default_factory=list)
    labels: Labels | None = Field(default_factory=dict)
    task_inputs: TaskInputs = Field(default_factory=dict)

    @field_validator("name", mode="before")
    @classmethod
    def _default_name(cls, value: Any) -> Any:
        return default_name(value)

    @field_validator("cache_key")
    @classmethod
    def _cache_key_fits(cls, cache_key: str | None) -> str | None:
        return cache_key_of_allowed_length(cache_key)
