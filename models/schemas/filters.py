"""Filter bodies for flows, flow runs, task runs, deployments, work pools and work queues.

Each filter is a strict pydantic model (unknown fields are refused) that turns itself into a
SQLAlchemy boolean with `as_sql_filter()`. The expressions are dialect-neutral: the one
operation the dialects spell differently, JSON tag containment, is a small SQL construct
compiled per dialect (jsonb `?&` / `?|` on PostgreSQL, `json_each` sub-selects elsewhere).

Semantics follow Prefect 3.9.1, quirks included:
- a filter with no criteria is TRUE;
- `any_` applies whenever it is given, so `any_=[]` matches nothing;
- `not_any_`, `like_` and tag `all_` apply only when non-empty (`all_=[]` matches everything);
- `before_` / `after_` are inclusive;
- a flow run's `start_time` range compares `coalesce(start_time, expected_start_time)`.
"""

import enum
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import QueryableAttribute, aliased
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal

from models import orm
from models.schemas.base import DateTime
from models.schemas.bounds import FilterValues, ShortText
from models.schemas.states import StateType

Criterion = sa.ColumnElement[bool]
SqlColumn = sa.ColumnElement[Any] | QueryableAttribute[Any]


# --------------------------------------------------------------------------- dialect-specific SQL


class PerDialect(sa.ColumnElement[Any]):
    """An expression spelled one way on PostgreSQL and another on every other dialect.

    Both spellings are ordinary SQLAlchemy expressions, so bound values stay parameters and
    statements that contain this construct remain cacheable. Its type is the PostgreSQL one.
    """

    inherit_cache = True
    _traverse_internals = [
        ("postgresql", InternalTraversal.dp_clauseelement),
        ("default", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, postgresql: sa.ColumnElement[Any], default: sa.ColumnElement[Any]) -> None:
        self.postgresql = postgresql
        self.default = default
        self.type = postgresql.type
        # A boolean needs no "= 1" on dialects without a native boolean type.
        self._is_implicitly_boolean = isinstance(self.type, sa.Boolean)

    @property
    def _from_objects(self) -> list[sa.FromClause]:
        return self.postgresql._from_objects


@compiles(PerDialect)
def _compile_default(element: PerDialect, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.default, **kw)})"


@compiles(PerDialect, "postgresql")
def _compile_postgresql(element: PerDialect, compiler: SQLCompiler, **kw: Any) -> str:
    return f"({compiler.process(element.postgresql, **kw)})"


def _text_array(values: Sequence[str]) -> sa.ColumnElement[Any]:
    array_type = postgresql.ARRAY(sa.Text())
    return sa.cast(sa.bindparam(None, list(values), type_=array_type), array_type)


def json_has_all(column: SqlColumn, tags: Sequence[str]) -> Criterion:
    """The JSON array `column` contains every one of `tags`."""
    wanted = sorted(set(tags))
    elements = sa.func.json_each(column).table_valued("value")
    present = (
        sa.select(sa.func.count(sa.distinct(elements.c.value)))
        .where(elements.c.value.in_(wanted))
        .scalar_subquery()
    )
    return PerDialect(
        postgresql=column.bool_op("?&")(_text_array(wanted)),
        default=present == len(wanted),
    )


def json_has_any(column: SqlColumn, tags: Sequence[str]) -> Criterion:
    """The JSON array `column` contains at least one of `tags` (none given: FALSE)."""
    elements = sa.func.json_each(column).table_valued("value")
    return PerDialect(
        postgresql=column.bool_op("?|")(_text_array(tags)),
        default=sa.exists().select_from(elements).where(elements.c.value.in_(list(tags))),
    )


def _tags_is_null(column: SqlColumn, is_null: bool) -> Criterion:
    """Prefect's "no tags": the array is empty (the column itself is never NULL)."""
    return column == [] if is_null else column != []


def _is_null(column: SqlColumn, is_null: bool) -> Criterion:
    return column.is_(None) if is_null else column.is_not(None)


# --------------------------------------------------------------------------- base classes


class Operator(str, enum.Enum):
    """How an operator filter combines its criteria."""

    and_ = "and_"
    or_ = "or_"


class FilterBaseModel(BaseModel):
    """A filter whose criteria are all required (AND)."""

    model_config = ConfigDict(extra="forbid")

    def as_sql_filter(self) -> Criterion:
        """This filter as a SQL boolean; TRUE when it holds no criteria."""
        criteria = list(self._criteria())
        return sa.and_(*criteria) if criteria else sa.true()

    def _criteria(self) -> Iterator[Criterion]:
        """The criteria of this filter. By default: those of every sub-filter given."""
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, FilterBaseModel):
                yield value.as_sql_filter()


class OperatorFilterBaseModel(FilterBaseModel):
    """A filter whose criteria are combined with `operator` (AND by default, or OR)."""

    operator: Operator = Operator.and_

    def as_sql_filter(self) -> Criterion:
        criteria = list(self._criteria())
        if not criteria:
            return sa.true()
        return sa.or_(*criteria) if self.operator is Operator.or_ else sa.and_(*criteria)


def _non_empty_criteria(*filters: FilterBaseModel | None) -> Iterator[Criterion]:
    """The SQL of each given sub-filter that holds at least one criterion.

    Used by the state filters: an empty `type` or `name` sub-filter is left out instead of
    contributing TRUE, which would swallow an `or_`. A sub-filter with both `any_` and
    `not_any_` contributes both, ANDed. (Older Prefect releases silently dropped such a
    compound sub-filter; 3.9.1 keeps it for flow runs, and so do we, for flow and task runs.)
    """
    for sub_filter in filters:
        if sub_filter is not None:
            criteria = list(sub_filter._criteria())
            if criteria:
                yield sa.and_(*criteria)


# --------------------------------------------------------------------------- flows


class FlowFilterId(FilterBaseModel):
    """Flow ids to include (`any_`) or exclude (`not_any_`)."""

    any_: FilterValues[UUID] | None = None
    not_any_: FilterValues[UUID] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.Flow.id.in_(self.any_)
        if self.not_any_:
            yield orm.Flow.id.not_in(self.not_any_)


class FlowFilterDeployment(OperatorFilterBaseModel):
    """Flows with (`is_null_=False`) or without (`is_null_=True`) any deployment."""

    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.is_null_ is not None:
            deployment = aliased(orm.Deployment)
            deployed_flows = sa.select(deployment.flow_id)
            if self.is_null_:
                yield orm.Flow.id.not_in(deployed_flows)
            else:
                yield orm.Flow.id.in_(deployed_flows)


class FlowFilterName(FilterBaseModel):
    """Exact flow names (`any_`) or a case-insensitive substring (`like_`)."""

    any_: FilterValues[ShortText] | None = None
    like_: ShortText | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.Flow.name.in_(self.any_)
        if self.like_:
            yield orm.Flow.name.ilike(f"%{self.like_}%")


class FlowFilterTags(OperatorFilterBaseModel):
    """Flows carrying every tag of `all_`, or with no tags / some tags (`is_null_`)."""

    all_: FilterValues[ShortText] | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.all_:
            yield json_has_all(orm.Flow.tags, self.all_)
        if self.is_null_ is not None:
            yield _tags_is_null(orm.Flow.tags, self.is_null_)


class FlowFilter(OperatorFilterBaseModel):
    """Criteria on a flow."""

    id: FlowFilterId | None = None
    deployment: FlowFilterDeployment | None = None
    name: FlowFilterName | None = None
    tags: FlowFilterTags | None = None


# --------------------------------------------------------------------------- flow runs


class FlowRunFilterId(FilterBaseModel):
    """Flow run ids to include (`any_`) or exclude (`not_any_`)."""

    any_: FilterValues[UUID] | None = None
    not_any_: FilterValues[UUID] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.FlowRun.id.in_(self.any_)
        if self.not_any_:
            yield orm.FlowRun.id.not_in(self.not_any_)


class FlowRunFilterName(FilterBaseModel):
    """Exact run names (`any_`) or a case-insensitive substring (`like_`)."""

    any_: FilterValues[ShortText] | None = None
    like_: ShortText | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.FlowRun.name.in_(self.any_)
        if self.like_:
            yield orm.FlowRun.name.ilike(f"%{self.like_}%")


class FlowRunFilterTags(OperatorFilterBaseModel):
    """Runs carrying every tag of `all_`, any tag of `any_`, or no tags / some (`is_null_`)."""

    all_: FilterValues[ShortText] | None = None
    any_: FilterValues[ShortText] | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.all_:
            yield json_has_all(orm.FlowRun.tags, self.all_)
        if self.any_ is not None:
            yield json_has_any(orm.FlowRun.tags, self.any_)
        if self.is_null_ is not None:
            yield _tags_is_null(orm.FlowRun.tags, self.is_null_)


class FlowRunFilterDeploymentId(OperatorFilterBaseModel):
    """Runs of the given deployments, or with / without a deployment."""

    any_: FilterValues[UUID] | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.FlowRun.deployment_id.in_(self.any_)
        if self.is_null_ is not None:
            yield _is_null(orm.FlowRun.deployment_id, self.is_null_)


class FlowRunFilterWorkQueueName(OperatorFilterBaseModel):
    """Runs by their (denormalised) work queue name."""

    any_: FilterValues[ShortText] | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.FlowRun.work_queue_name.in_(self.any_)
        if self.is_null_ is not None:
            yield _is_null(orm.FlowRun.work_queue_name, self.is_null_)


class FlowRunFilterStateType(FilterBaseModel):
    """Runs whose current state type is (`any_`) or is not (`not_any_`) one of these."""

    any_: FilterValues[StateType] | None = None
    not_any_: FilterValues[StateType] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.FlowRun.state_type.in_(self.any_)
        if self.not_any_:
            yield orm.FlowRun.state_type.not_in(self.not_any_)


class FlowRunFilterStateName(FilterBaseModel):
    """Runs whose current state name is (`any_`) or is not (`not_any_`) one of these."""

    any_: FilterValues[ShortText] | None = None
    not_any_: FilterValues[ShortText] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.FlowRun.state_name.in_(self.any_)
        if self.not_any_:
            yield orm.FlowRun.state_name.not_in(self.not_any_)


class FlowRunFilterState(OperatorFilterBaseModel):
    """Criteria on the current state's type and name."""

    type: FlowRunFilterStateType | None = None
    name: FlowRunFilterStateName | None = None

    def _criteria(self) -> Iterator[Criterion]:
        return _non_empty_criteria(self.type, self.name)


class FlowRunFilterFlowVersion(FilterBaseModel):
    """Runs of the given flow versions."""

    any_: FilterValues[ShortText] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.FlowRun.flow_version.in_(self.any_)


class FlowRunFilterStartTime(FilterBaseModel):
    """Start-time range (falling back to the expected start) and presence of a start time."""

    before_: DateTime | None = None
    after_: DateTime | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        # Runs that have not started are placed at their expected start, as the
        # START_TIME sorts do (and the coalesce indexes serve both).
        start = sa.func.coalesce(orm.FlowRun.start_time, orm.FlowRun.expected_start_time)
        if self.before_ is not None:
            yield start <= self.before_
        if self.after_ is not None:
            yield start >= self.after_
        if self.is_null_ is not None:
            yield _is_null(orm.FlowRun.start_time, self.is_null_)


class FlowRunFilterEndTime(FilterBaseModel):
    """End-time range and presence of an end time."""

    before_: DateTime | None = None
    after_: DateTime | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.before_ is not None:
            yield orm.FlowRun.end_time <= self.before_
        if self.after_ is not None:
            yield orm.FlowRun.end_time >= self.after_
        if self.is_null_ is not None:
            yield _is_null(orm.FlowRun.end_time, self.is_null_)


class FlowRunFilterExpectedStartTime(FilterBaseModel):
    """Expected-start-time range."""

    before_: DateTime | None = None
    after_: DateTime | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.before_ is not None:
            yield orm.FlowRun.expected_start_time <= self.before_
        if self.after_ is not None:
            yield orm.FlowRun.expected_start_time >= self.after_


class FlowRunFilterNextScheduledStartTime(FilterBaseModel):
    """Next-scheduled-start-time range."""

    before_: DateTime | None = None
    after_: DateTime | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.before_ is not None:
            yield orm.FlowRun.next_scheduled_start_time <= self.before_
        if self.after_ is not None:
            yield orm.FlowRun.next_scheduled_start_time >= self.after_


class FlowRunFilterParentFlowRunId(OperatorFilterBaseModel):
    """Subflows of the given runs: runs whose parent task run belongs to one of them."""

    any_: FilterValues[UUID] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            task_run = aliased(orm.TaskRun)
            parent_task_runs = sa.select(task_run.id).where(task_run.flow_run_id.in_(self.any_))
            yield orm.FlowRun.parent_task_run_id.in_(parent_task_runs)


class FlowRunFilterParentTaskRunId(OperatorFilterBaseModel):
    """Runs by their parent task run, or with / without one."""

    any_: FilterValues[UUID] | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.FlowRun.parent_task_run_id.in_(self.any_)
        if self.is_null_ is not None:
            yield _is_null(orm.FlowRun.parent_task_run_id, self.is_null_)


class FlowRunFilterIdempotencyKey(FilterBaseModel):
    """Idempotency keys to include (`any_`) or exclude (`not_any_`)."""

    any_: FilterValues[ShortText] | None = None
    not_any_: FilterValues[ShortText] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.FlowRun.idempotency_key.in_(self.any_)
        if self.not_any_:
            yield orm.FlowRun.idempotency_key.not_in(self.not_any_)


class FlowRunFilterCreatedBy(OperatorFilterBaseModel):
    """Runs by their creator's id or type (keys of the `created_by` JSON), or its presence."""

    id_: FilterValues[UUID] | None = None
    type_: FilterValues[ShortText] | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        created_by = orm.FlowRun.created_by
        if self.id_ is not None:
            yield created_by["id"].as_string().in_([str(value) for value in self.id_])
        if self.type_ is not None:
            yield created_by["type"].as_string().in_(self.type_)
        if self.is_null_ is not None:
            yield _is_null(created_by, self.is_null_)


class FlowRunFilter(OperatorFilterBaseModel):
    """Criteria on a flow run's own columns."""

    id: FlowRunFilterId | None = None
    name: FlowRunFilterName | None = None
    tags: FlowRunFilterTags | None = None
    deployment_id: FlowRunFilterDeploymentId | None = None
    work_queue_name: FlowRunFilterWorkQueueName | None = None
    state: FlowRunFilterState | None = None
    flow_version: FlowRunFilterFlowVersion | None = None
    start_time: FlowRunFilterStartTime | None = None
    end_time: FlowRunFilterEndTime | None = None
    expected_start_time: FlowRunFilterExpectedStartTime | None = None
    next_scheduled_start_time: FlowRunFilterNextScheduledStartTime | None = None
    parent_flow_run_id: FlowRunFilterParentFlowRunId | None = None
    parent_task_run_id: FlowRunFilterParentTaskRunId | None = None
    idempotency_key: FlowRunFilterIdempotencyKey | None = None
    created_by: FlowRunFilterCreatedBy | None = None


# --------------------------------------------------------------------------- task runs


class TaskRunFilterFlowRunId(OperatorFilterBaseModel):
    """Task runs of the given flow runs; by default only those that belong to a flow run.

    `is_null_` defaults to False: True selects background task runs (no flow run), False
    without `any_` selects task runs that have a flow run, False with `any_` applies `any_`.
    """

    any_: FilterValues[UUID] | None = None
    is_null_: bool | None = False

    def _criteria(self) -> Iterator[Criterion]:
        if self.is_null_ is True:
            yield orm.TaskRun.flow_run_id.is_(None)
        elif self.is_null_ is False and self.any_ is None:
            yield orm.TaskRun.flow_run_id.is_not(None)
        elif self.any_ is not None:
            yield orm.TaskRun.flow_run_id.in_(self.any_)


class TaskRunFilterId(FilterBaseModel):
    """Task run ids to include."""

    any_: FilterValues[UUID] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.TaskRun.id.in_(self.any_)


class TaskRunFilterName(FilterBaseModel):
    """Exact task run names (`any_`) or a case-insensitive substring (`like_`)."""

    any_: FilterValues[ShortText] | None = None
    like_: ShortText | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.TaskRun.name.in_(self.any_)
        if self.like_:
            yield orm.TaskRun.name.ilike(f"%{self.like_}%")


class TaskRunFilterTags(OperatorFilterBaseModel):
    """Task runs carrying every tag of `all_`, or with no tags / some tags (`is_null_`)."""

    all_: FilterValues[ShortText] | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.all_:
            yield json_has_all(orm.TaskRun.tags, self.all_)
        if self.is_null_ is not None:
            yield _tags_is_null(orm.TaskRun.tags, self.is_null_)


class TaskRunFilterStateType(FilterBaseModel):
    """Task runs whose current state type is one of these."""

    any_: FilterValues[StateType] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.TaskRun.state_type.in_(self.any_)


class TaskRunFilterStateName(FilterBaseModel):
    """Task runs whose current state name is one of these."""

    any_: FilterValues[ShortText] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.TaskRun.state_name.in_(self.any_)


class TaskRunFilterState(OperatorFilterBaseModel):
    """Criteria on a task run's current state type and name."""

    type: TaskRunFilterStateType | None = None
    name: TaskRunFilterStateName | None = None

    def _criteria(self) -> Iterator[Criterion]:
        return _non_empty_criteria(self.type, self.name)


class TaskRunFilterSubFlowRuns(FilterBaseModel):
    """Task runs that are (`exists_=True`) or are not (False) the parent of a subflow run."""

    exists_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.exists_ is not None:
            # An alias: the enclosing query may itself select from flow_run.
            subflow = aliased(orm.FlowRun)
            has_subflow = sa.exists().where(subflow.parent_task_run_id == orm.TaskRun.id)
            yield has_subflow if self.exists_ else ~has_subflow


class TaskRunFilterStartTime(FilterBaseModel):
    """Start-time range (the raw start time) and presence of a start time."""

    before_: DateTime | None = None
    after_: DateTime | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.before_ is not None:
            yield orm.TaskRun.start_time <= self.before_
        if self.after_ is not None:
            yield orm.TaskRun.start_time >= self.after_
        if self.is_null_ is not None:
            yield _is_null(orm.TaskRun.start_time, self.is_null_)


class TaskRunFilterEndTime(FilterBaseModel):
    """End-time range and presence of an end time."""

    before_: DateTime | None = None
    after_: DateTime | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.before_ is not None:
            yield orm.TaskRun.end_time <= self.before_
        if self.after_ is not None:
            yield orm.TaskRun.end_time >= self.after_
        if self.is_null_ is not None:
            yield _is_null(orm.TaskRun.end_time, self.is_null_)


class TaskRunFilterExpectedStartTime(FilterBaseModel):
    """Expected-start-time range."""

    before_: DateTime | None = None
    after_: DateTime | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.before_ is not None:
            yield orm.TaskRun.expected_start_time <= self.before_
        if self.after_ is not None:
            yield orm.TaskRun.expected_start_time >= self.after_


class TaskRunFilter(OperatorFilterBaseModel):
    """Criteria on a task run."""

    id: TaskRunFilterId | None = None
    name: TaskRunFilterName | None = None
    tags: TaskRunFilterTags | None = None
    state: TaskRunFilterState | None = None
    start_time: TaskRunFilterStartTime | None = None
    end_time: TaskRunFilterEndTime | None = None
    expected_start_time: TaskRunFilterExpectedStartTime | None = None
    subflow_runs: TaskRunFilterSubFlowRuns | None = None
    flow_run_id: TaskRunFilterFlowRunId | None = None


# --------------------------------------------------------------------------- deployments


class DeploymentFilterId(FilterBaseModel):
    """Deployment ids to include (`any_`) or exclude (`not_any_`)."""

    any_: FilterValues[UUID] | None = None
    not_any_: FilterValues[UUID] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.Deployment.id.in_(self.any_)
        if self.not_any_:
            yield orm.Deployment.id.not_in(self.not_any_)


class DeploymentFilterName(FilterBaseModel):
    """Exact deployment names (`any_`) or a case-insensitive substring (`like_`)."""

    any_: FilterValues[ShortText] | None = None
    like_: ShortText | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.Deployment.name.in_(self.any_)
        if self.like_:
            yield orm.Deployment.name.ilike(f"%{self.like_}%")


class DeploymentOrFlowNameFilter(FilterBaseModel):
    """A case-insensitive substring of the deployment's name or of its flow's name."""

    like_: ShortText | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.like_:
            pattern = f"%{self.like_}%"
            # An alias, so that a flow table joined by the enclosing query is never mistaken
            # for the deployment's flow.
            flow = aliased(orm.Flow)
            flow_matches = sa.exists().where(
                flow.id == orm.Deployment.flow_id, flow.name.ilike(pattern)
            )
            yield sa.or_(orm.Deployment.name.ilike(pattern), flow_matches)


DeploymentFilterFlowOrDeploymentName = DeploymentOrFlowNameFilter
"""The same filter under the name of its field (`flow_or_deployment_name`)."""


class DeploymentFilterPaused(FilterBaseModel):
    """Paused (`eq_=True`) or active (`eq_=False`) deployments."""

    eq_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.eq_ is not None:
            yield orm.Deployment.paused.is_(self.eq_)


class DeploymentFilterWorkQueueName(FilterBaseModel):
    """Deployments by their work queue name."""

    any_: FilterValues[ShortText] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.Deployment.work_queue_name.in_(self.any_)


class DeploymentFilterConcurrencyLimit(FilterBaseModel):
    """Deprecated: accepted for compatibility and ignored, as Prefect does."""

    ge_: int | None = None
    le_: int | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        return iter(())


class DeploymentFilterTags(OperatorFilterBaseModel):
    """Deployments carrying every tag of `all_`, any tag of `any_`, or no tags / some."""

    all_: FilterValues[ShortText] | None = None
    any_: FilterValues[ShortText] | None = None
    is_null_: bool | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.all_:
            yield json_has_all(orm.Deployment.tags, self.all_)
        if self.any_ is not None:
            yield json_has_any(orm.Deployment.tags, self.any_)
        if self.is_null_ is not None:
            yield _tags_is_null(orm.Deployment.tags, self.is_null_)


class DeploymentFilter(OperatorFilterBaseModel):
    """Criteria on a deployment."""

    id: DeploymentFilterId | None = None
    name: DeploymentFilterName | None = None
    flow_or_deployment_name: DeploymentOrFlowNameFilter | None = None
    paused: DeploymentFilterPaused | None = None
    tags: DeploymentFilterTags | None = None
    work_queue_name: DeploymentFilterWorkQueueName | None = None
    concurrency_limit: DeploymentFilterConcurrencyLimit | None = None

    def _criteria(self) -> Iterator[Criterion]:
        # `concurrency_limit` is ignored altogether: not even a TRUE, which would swallow `or_`.
        for sub_filter in (
            self.id,
            self.name,
            self.flow_or_deployment_name,
            self.paused,
            self.tags,
            self.work_queue_name,
        ):
            if sub_filter is not None:
                yield sub_filter.as_sql_filter()


# --------------------------------------------------------------------------- work pools


class WorkPoolFilterId(FilterBaseModel):
    """Work pool ids to include."""

    any_: FilterValues[UUID] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.WorkPool.id.in_(self.any_)


class WorkPoolFilterName(FilterBaseModel):
    """Work pool names to include."""

    any_: FilterValues[ShortText] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.WorkPool.name.in_(self.any_)


class WorkPoolFilterType(FilterBaseModel):
    """Work pool types to include."""

    any_: FilterValues[ShortText] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.WorkPool.type.in_(self.any_)


class WorkPoolFilter(OperatorFilterBaseModel):
    """Criteria on a work pool."""

    id: WorkPoolFilterId | None = None
    name: WorkPoolFilterName | None = None
    type: WorkPoolFilterType | None = None


# --------------------------------------------------------------------------- work queues


class WorkQueueFilterId(FilterBaseModel):
    """Work queue ids to include."""

    any_: FilterValues[UUID] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.WorkQueue.id.in_(self.any_)


class WorkQueueFilterName(FilterBaseModel):
    """Exact queue names (`any_`) or case-insensitive prefixes (`startswith_`, ORed)."""

    any_: FilterValues[ShortText] | None = None
    startswith_: FilterValues[ShortText] | None = None

    def _criteria(self) -> Iterator[Criterion]:
        if self.any_ is not None:
            yield orm.WorkQueue.name.in_(self.any_)
        if self.startswith_:  # an empty list selects nothing out, as in Prefect (its empty OR drops away)
            yield sa.or_(*(orm.WorkQueue.name.ilike(f"{prefix}%") for prefix in self.startswith_))


class WorkQueueFilter(OperatorFilterBaseModel):
    """Criteria on a work queue."""

    id: WorkQueueFilterId | None = None
    name: WorkQueueFilterName | None = None


# --------------------------------------------------------------------------- the six together


class FlowRunFilters(BaseModel):
    """The six filters a read or count of flow runs takes, each optional; unknown fields are
    refused. An absent filter selects every run; a given one, even empty, also requires the
    related row (`deployment_filter={}`: runs that have a deployment).

    The `flow_runs.read_flow_runs` / `count_flow_runs` bodies are this bundle (its fields are
    their top-level kwargs), and the query functions take it whole."""

    model_config = ConfigDict(extra="forbid")

    flow_filter: FlowFilter | None = None
    flow_run_filter: FlowRunFilter | None = None
    task_run_filter: TaskRunFilter | None = None
    deployment_filter: DeploymentFilter | None = None
    work_pool_filter: WorkPoolFilter | None = None
    work_queue_filter: WorkQueueFilter | None = None

    def given(self) -> dict[str, FilterBaseModel]:
        """The filters given (not None), by field name, in field order."""
        return {
            name: value
            for name in FlowRunFilters.model_fields
            if (value := getattr(self, name)) is not None
        }
