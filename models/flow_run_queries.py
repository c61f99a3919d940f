"""Reading and counting flow runs through the filter bodies (`read_flow_runs` and `count_flow_runs`
are re-exported by `models.flow_runs`), and reading them straight into their REST responses, or
their JSON, when they are only serialised. The filters travel as one `FlowRunFilters` bundle.

A filter left out (None) selects everything. A related-object filter that is given, even
empty (`DeploymentFilter()`), also requires the related row to exist: `deployment_filter={}`
selects the runs that have a deployment, `task_run_filter={}` those with at least one task run.
"""

import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import InstrumentedAttribute, Session, load_only, selectinload

from models import flow_run_documents, orm
from models.database import dialect_name
from models.schemas.filters import (
    DeploymentFilter,
    FlowFilter,
    FlowRunFilter,
    FlowRunFilters,
    TaskRunFilter,
    WorkPoolFilter,
    WorkQueueFilter,
)
from models.schemas.responses import RUN_FIELDS, STATE_FIELDS, FlowRunJson, FlowRunResponse
from models.schemas.sorting import FlowRunSort

Column = str | InstrumentedAttribute[Any]


def read_flow_runs(
    session: Session,
    columns: Sequence[Column] | None = None,
    flow_filter: FlowFilter | None = None,
    flow_run_filter: FlowRunFilter | None = None,
    task_run_filter: TaskRunFilter | None = None,
    deployment_filter: DeploymentFilter | None = None,
    work_pool_filter: WorkPoolFilter | None = None,
    work_queue_filter: WorkQueueFilter | None = None,
    offset: int | None = None,
    limit: int | None = None,
    sort: FlowRunSort = FlowRunSort.ID_DESC,
) -> list[orm.FlowRun]:
    """`read_matching_flow_runs` for the six filters given one by one (the reference's signature)."""
    filters = FlowRunFilters(
        flow_filter=flow_filter,
        flow_run_filter=flow_run_filter,
        task_run_filter=task_run_filter,
        deployment_filter=deployment_filter,
        work_pool_filter=work_pool_filter,
        work_queue_filter=work_queue_filter,
    )
    return read_matching_flow_runs(session, filters, columns=columns, offset=offset, limit=limit, sort=sort)


def count_flow_runs(
    session: Session,
    flow_filter: FlowFilter | None = None,
    flow_run_filter: FlowRunFilter | None = None,
    task_run_filter: TaskRunFilter | None = None,
    deployment_filter: DeploymentFilter | None = None,
    work_pool_filter: WorkPoolFilter | None = None,
    work_queue_filter: WorkQueueFilter | None = None,
) -> int:
    """`count_matching_flow_runs` for the six filters given one by one (the reference's signature)."""
    filters = FlowRunFilters(
        flow_filter=flow_filter,
        flow_run_filter=flow_run_filter,
        task_run_filter=task_run_filter,
        deployment_filter=deployment_filter,
        work_pool_filter=work_pool_filter,
        work_queue_filter=work_queue_filter,
    )
    return count_matching_flow_runs(session, filters)


def read_matching_flow_runs(
    session: Session,
    filters: FlowRunFilters,
    *,
    columns: Sequence[Column] | None = None,
    offset: int | None = None,
    limit: int | None = None,
    sort: FlowRunSort = FlowRunSort.ID_DESC,
) -> list[orm.FlowRun]:
    """The matching runs in `sort` order, each once, with work queue and pool loaded.

    `columns` (names or attributes) restricts the columns loaded. Applies only the given
    `limit`; the 200-per-call cap is the wire layer's.

    The current state comes joined to each run; queues and pools (few, shared by many runs, and
    often absent) come by a second query for the distinct ones, only when some run has one.
    """
    query = sa.select(orm.FlowRun).options(
        selectinload(orm.FlowRun.work_queue).joinedload(orm.WorkQueue.work_pool)
    )
    query = _page(query, filters, sort, offset, limit)
    if columns:
        query = query.options(load_only(*_column_attributes(columns)))
    return list(session.scalars(query).unique())


def read_flow_run_responses(
    session: Session,
    filters: FlowRunFilters,
    *,
    offset: int | None = None,
    limit: int | None = None,
    sort: FlowRunSort = FlowRunSort.ID_DESC,
) -> list[FlowRunResponse]:
    """`FlowRunResponse.from_orm_run` of each run `read_matching_flow_runs` returns, for runs that
    are only serialised: read as plain rows (run, current state, queue and pool in one
    statement), with no ORM instances built."""
    query = _page(_response_query(), filters, sort, offset, limit)
    return [_response(row) for row in session.execute(query)]


def read_flow_run_json(
    session: Session,
    filters: FlowRunFilters,
    *,
    offset: int | None = None,
    limit: int | None = None,
    sort: FlowRunSort = FlowRunSort.ID_DESC,
) -> list[FlowRunJson]:
    """`model_dump(mode="json")` of each response `read_flow_run_responses` returns: on PostgreSQL
    each run's document is built by the database (`models.flow_run_documents`)."""
    if dialect_name(session) != "postgresql":
        responses = read_flow_run_responses(session, filters, offset=offset, limit=limit, sort=sort)
        return [FlowRunJson(response.model_dump(mode="json")) for response in responses]
    query = _page(flow_run_documents.document_query(), filters, sort, offset, limit)
    return flow_run_documents.documents(session.execute(query))


def count_matching_flow_runs(session: Session, filters: FlowRunFilters) -> int:
    """How many runs `read_matching_flow_runs` returns for the same filters (without offset/limit).

    The flow, deployment, work queue and work pool filters are INNER JOINs instead of EXISTS:
    each joins at most one row per run (many-to-one), so the count cannot inflate, and a run
    without the related row drops out exactly as EXISTS would drop it. Task runs are the
    one-to-many side and stay an EXISTS, except when they are the only filter: the count is then
    that of the distinct runs of the matching task runs (each one's run exists: the foreign key
    cascades), with no probe into `flow_run` per task run.
    """
    task_run_filter = filters.task_run_filter
    if task_run_filter is not None and list(filters.given()) == ["task_run_filter"]:
        runs = (
            sa.select(orm.TaskRun.flow_run_id)
            .where(orm.TaskRun.flow_run_id.is_not(None), task_run_filter.as_sql_filter())
            .distinct()
            .subquery()
        )
        return session.scalar(sa.select(sa.func.count()).select_from(runs)) or 0
    query = sa.select(sa.func.count()).select_from(orm.FlowRun)
    if filters.flow_run_filter is not None:
        query = query.where(filters.flow_run_filter.as_sql_filter())
    if filters.deployment_filter is not None:
        query = query.join(orm.Deployment, orm.Deployment.id == orm.FlowRun.deployment_id)
        query = query.where(filters.deployment_filter.as_sql_filter())
    if filters.work_queue_filter is not None or filters.work_pool_filter is not None:
        query = query.join(orm.WorkQueue, orm.WorkQueue.id == orm.FlowRun.work_queue_id)
        if filters.work_queue_filter is not None:
            query = query.where(filters.work_queue_filter.as_sql_filter())
        if filters.work_pool_filter is not None:
            query = query.join(orm.WorkPool, orm.WorkPool.id == orm.WorkQueue.work_pool_id)
            query = query.where(filters.work_pool_filter.as_sql_filter())
    if filters.flow_filter is not None:
        query = query.join(orm.Flow, orm.Flow.id == orm.FlowRun.flow_id)
        query = query.where(filters.flow_filter.as_sql_filter())
    if task_run_filter is not None:
        query = query.where(_has_task_run(task_run_filter))
    return session.scalar(query) or 0


def _page(
    query: sa.Select[Any],
    filters: FlowRunFilters,
    sort: FlowRunSort,
    offset: int | None,
    limit: int | None,
) -> sa.Select[Any]:
    """`query` restricted to one page of the runs the filters select, in `sort` order.

    With a task-run filter (a semi-join against task runs walks many runs to fill a page), the
    page's ids come from the indexes alone first, then just those rows are read (same rows, same
    order).
    """
    criteria = _flow_run_criteria(filters)
    if filters.task_run_filter is not None:
        page = sa.select(orm.FlowRun.id).where(*criteria).order_by(*sort.as_sql_sort())
        query = query.where(orm.FlowRun.id.in_(page.offset(offset).limit(limit).scalar_subquery()))
        return query.order_by(*sort.as_sql_sort())
    return query.where(*criteria).order_by(*sort.as_sql_sort()).offset(offset).limit(limit)


# The current state, queue and pool joined to the runs for `read_flow_run_responses`. Aliased:
# the related-row filters are EXISTS on the queue and pool tables, which must not correlate to
# these joins.
_state = orm.FlowRunState.__table__.alias("current_state")
_queue = orm.WorkQueue.__table__.alias("run_queue")
_pool = orm.WorkPool.__table__.alias("run_pool")
_ESTIMATES = {
    name: getattr(orm.FlowRun, name).fget
    for name in ("estimated_run_time", "estimated_start_time_delta")
}
"""The ORM run's computed fields (properties), applied to a row: it has the run's column names."""


@functools.cache
def _response_query() -> sa.Select[Any]:
    """The run's fields in `RUN_FIELDS` order (NULL where the field is not a run column: filled
    in by `_response`), the state's in `STATE_FIELDS` order, what else the run's computed fields
    read (`state_timestamp`), then the queue's id, name and pool id and the pool's name."""
    runs: sa.Table = orm.FlowRun.__table__  # type: ignore[assignment]
    run_fields = [runs.c[name] if name in runs.c else sa.null().label(name) for name in RUN_FIELDS]
    state_fields = [_state.c[name].label(f"current_state_{name}") for name in STATE_FIELDS]
    queue_fields = [
        _queue.c.id.label("run_queue_id"),
        _queue.c.name.label("run_queue_name"),
        _queue.c.work_pool_id.label("run_queue_work_pool_id"),
        _pool.c.name.label("run_pool_name"),
    ]
    joined = (
        runs.outerjoin(_state, _state.c.id == runs.c.state_id)
        .outerjoin(_queue, _queue.c.id == runs.c.work_queue_id)
        .outerjoin(_pool, _pool.c.id == _queue.c.work_pool_id)
    )
    columns = [*run_fields, *state_fields, runs.c.state_timestamp, *queue_fields]
    return sa.select(*columns).select_from(joined)


_STATE_AT = len(RUN_FIELDS)
_STATE_END = _STATE_AT + len(STATE_FIELDS)


def _response(row: sa.Row[Any]) -> FlowRunResponse:
    """The response for one row of `_response_query`, as `from_orm_run` builds it."""
    values = dict(zip(RUN_FIELDS, row))
    for name, estimate in _ESTIMATES.items():
        values[name] = estimate(row)
    state = row[_STATE_AT:_STATE_END]
    values["state"] = None if state[0] is None else dict(zip(STATE_FIELDS, state))
    response = FlowRunResponse.from_run_values(values)
    queue = row._mapping
    if queue["run_queue_id"] is not None:
        response.set_work_queue(queue["run_queue_name"], queue["run_queue_work_pool_id"], queue["run_pool_name"])
    return response


def _flow_run_criteria(filters: FlowRunFilters) -> list[sa.ColumnElement[bool]]:
    """The WHERE criteria on `flow_run` for the six filters, related rows as EXISTS."""
    criteria: list[sa.ColumnElement[bool]] = []
    if filters.flow_run_filter is not None:
        criteria.append(filters.flow_run_filter.as_sql_filter())
    if filters.deployment_filter is not None:
        criteria.append(
            sa.exists().where(
                orm.Deployment.id == orm.FlowRun.deployment_id,
                filters.deployment_filter.as_sql_filter(),
            )
        )
    if filters.work_pool_filter is not None:
        criteria.append(
            sa.exists().where(
                orm.WorkQueue.id == orm.FlowRun.work_queue_id,
                orm.WorkPool.id == orm.WorkQueue.work_pool_id,
                filters.work_pool_filter.as_sql_filter(),
            )
        )
    if filters.work_queue_filter is not None:
        criteria.append(
            sa.exists().where(
                orm.WorkQueue.id == orm.FlowRun.work_queue_id,
                filters.work_queue_filter.as_sql_filter(),
            )
        )
    if filters.flow_filter is not None:
        criteria.append(
            sa.exists().where(orm.Flow.id == orm.FlowRun.flow_id, filters.flow_filter.as_sql_filter())
        )
    if filters.task_run_filter is not None:
        criteria.append(_has_task_run(filters.task_run_filter))
    return criteria


def _has_task_run(task_run_filter: TaskRunFilter) -> sa.ColumnElement[bool]:
    """The run has at least one task run matching the filter."""
    return sa.exists().where(
        orm.TaskRun.flow_run_id == orm.FlowRun.id, task_run_filter.as_sql_filter()
    )


def _column_attributes(columns: Sequence[Column]) -> list[InstrumentedAttribute[Any]]:
    """Column names resolved to `FlowRun` attributes; an unknown name is a ValueError."""
    known = sa.inspect(orm.FlowRun).column_attrs
    attributes: list[InstrumentedAttribute[Any]] = []
    for column in columns:
        if isinstance(column, str):
            if column not in known:
                raise ValueError(f"flow_run has no column {column!r}")
            column = getattr(orm.FlowRun, column)
        attributes.append(column)
    return attributes
