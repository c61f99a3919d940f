"""Sort orders for flow runs, task runs and deployments, as Prefect names them.

`as_sql_sort()` gives the ORDER BY expressions. NULLs sort where the dialect puts them
(PostgreSQL: last ascending, first descending; SQLite: the other way round), as in Prefect.

Deviation from Prefect, for stable paging: every order ends with the row id as a tie-breaker,
in the direction of the main key, so `offset`/`limit` pages over equal keys (runs never
started, shared names) neither repeat nor skip rows. A composite index (key, id) serves both
directions of such an order.
"""

import enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import QueryableAttribute

from models import orm
from models.schemas.filters import PerDialect
from models.schemas.states import StateType

SortKey = sa.ColumnElement[Any]
SortColumn = sa.ColumnElement[Any] | QueryableAttribute[Any]


def _ascending(key: SortColumn, id_column: SortColumn) -> list[SortKey]:
    return [key.asc(), id_column.asc()]


def _descending(key: SortColumn, id_column: SortColumn) -> list[SortKey]:
    return [key.desc(), id_column.desc()]


class FlowRunSort(str, enum.Enum):
    """How to order flow runs (default: newest id first)."""

    ID_DESC = "ID_DESC"
    START_TIME_ASC = "START_TIME_ASC"
    START_TIME_DESC = "START_TIME_DESC"
    EXPECTED_START_TIME_ASC = "EXPECTED_START_TIME_ASC"
    EXPECTED_START_TIME_DESC = "EXPECTED_START_TIME_DESC"
    NAME_ASC = "NAME_ASC"
    NAME_DESC = "NAME_DESC"
    NEXT_SCHEDULED_START_TIME_ASC = "NEXT_SCHEDULED_START_TIME_ASC"
    END_TIME_DESC = "END_TIME_DESC"

    def as_sql_sort(self) -> list[SortKey]:
        run = orm.FlowRun
        # A run that has not started sorts at its expected start (same expression as the
        # start-time filter and the coalesce indexes).
        start = sa.func.coalesce(run.start_time, run.expected_start_time)
        orders: dict[FlowRunSort, list[SortKey]] = {
            FlowRunSort.ID_DESC: [run.id.desc()],
            FlowRunSort.START_TIME_ASC: _ascending(start, run.id),
            FlowRunSort.START_TIME_DESC: _descending(start, run.id),
            FlowRunSort.EXPECTED_START_TIME_ASC: _ascending(run.expected_start_time, run.id),
            FlowRunSort.EXPECTED_START_TIME_DESC: _descending(run.expected_start_time, run.id),
            FlowRunSort.NAME_ASC: _ascending(run.name, run.id),
            FlowRunSort.NAME_DESC: _descending(run.name, run.id),
            FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC: _ascending(
                run.next_scheduled_start_time, run.id
            ),
            FlowRunSort.END_TIME_DESC: _descending(run.end_time, run.id),
        }
        return orders[self]


def task_run_estimated_run_time() -> SortKey:
    """A task run's run time so far, as a sortable SQL value.

    A RUNNING task's clock includes the time since it entered its current state. PostgreSQL
    yields an interval; elsewhere (intervals stored as epoch-based datetimes) fractional days.
    """
    run = orm.TaskRun
    running = run.state_type == StateType.RUNNING
    postgresql = sa.case(
        (running, run.total_run_time + (sa.func.now() - run.state_timestamp)),
        else_=run.total_run_time,
    )
    as_days = sa.func.julianday
    default = as_days(run.total_run_time) + sa.case(
        (running, as_days("now") - as_days(run.state_timestamp)), else_=0.0
    )
    return PerDialect(postgresql=postgresql, default=default)


class TaskRunSort(str, enum.Enum):
    """How to order task runs (default: newest id first)."""

    ID_DESC = "ID_DESC"
    EXPECTED_START_TIME_ASC = "EXPECTED_START_TIME_ASC"
    EXPECTED_START_TIME_DESC = "EXPECTED_START_TIME_DESC"
    NAME_ASC = "NAME_ASC"
    NAME_DESC = "NAME_DESC"
    NEXT_SCHEDULED_START_TIME_ASC = "NEXT_SCHEDULED_START_TIME_ASC"
    END_TIME_DESC = "END_TIME_DESC"
    DURATION_DESC = "DURATION_DESC"
    DURATION_ASC = "DURATION_ASC"

    def as_sql_sort(self) -> list[SortKey]:
        run = orm.TaskRun
        duration = task_run_estimated_run_time()
        # Prefect breaks duration ties by expected start (latest first), then id.
        duration_ties: list[SortKey] = [run.expected_start_time.desc(), run.id.desc()]
        orders: dict[TaskRunSort, list[SortKey]] = {
            TaskRunSort.ID_DESC: [run.id.desc()],
            TaskRunSort.EXPECTED_START_TIME_ASC: _ascending(run.expected_start_time, run.id),
            TaskRunSort.EXPECTED_START_TIME_DESC: _descending(run.expected_start_time, run.id),
            TaskRunSort.NAME_ASC: _ascending(run.name, run.id),
            TaskRunSort.NAME_DESC: _descending(run.name, run.id),
            TaskRunSort.NEXT_SCHEDULED_START_TIME_ASC: _ascending(
                run.next_scheduled_start_time, run.id
            ),
            TaskRunSort.END_TIME_DESC: _descending(run.end_time, run.id),
            TaskRunSort.DURATION_DESC: [duration.desc(), *duration_ties],
            TaskRunSort.DURATION_ASC: [duration.asc(), *duration_ties],
        }
        return orders[self]


class DeploymentSort(str, enum.Enum):
    """How to order deployments (default: newest first)."""

    CREATED_DESC = "CREATED_DESC"
    UPDATED_DESC = "UPDATED_DESC"
    NAME_ASC = "NAME_ASC"
    NAME_DESC = "NAME_DESC"

    def as_sql_sort(self) -> list[SortKey]:
        deployment = orm.Deployment
        orders: dict[DeploymentSort, list[SortKey]] = {
            DeploymentSort.CREATED_DESC: _descending(deployment.created, deployment.id),
            DeploymentSort.UPDATED_DESC: _descending(deployment.updated, deployment.id),
            DeploymentSort.NAME_ASC: _ascending(deployment.name, deployment.id),
            DeploymentSort.NAME_DESC: _descending(deployment.name, deployment.id),
        }
        return orders[self]
