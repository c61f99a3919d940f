"""Inserting a flow run with SQLAlchemy Core, and handing it back as a persistent ORM instance.

`create_flow_run` returns the ORM run, but a unit-of-work flush (and the reload an idempotent
insert needed) costs more than the insert itself. So every column's value is decided here, the
defaults the ORM would apply included; one INSERT writes them, and the same values make the
instance the session then holds as if it had loaded it (no second round trip). On PostgreSQL a
run created with a state is not inserted here: its row goes in the statement that writes its
first state (`models.transition_sql`, `RunSnapshot.new_row`); the worker's create also reads its
parents with the request's inbox record (`read_parents_and_inbox`).
"""

import functools
import uuid
from typing import Any, NamedTuple, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session, make_transient_to_detached

from models import driver_sql, orm
from models.database import (
    held_instance,
    insert_for_dialect,
    one_row_anchor,
    table_insert,
)
from models.errors import ObjectNotFoundError
from models.requests import Recorded

_runs: sa.Table = orm.FlowRun.__table__  # type: ignore[assignment]

InstanceT = TypeVar("InstanceT")


class Parents(NamedTuple):
    """What a new run inherits: its flow's labels and, if it has one, its deployment's."""

    flow_labels: dict[str, Any] | None
    deployment_labels: dict[str, Any] | None


class ParentIds(NamedTuple):
    """The rows a new run refers to, which must exist."""

    flow_id: uuid.UUID
    deployment_id: uuid.UUID | None = None
    parent_task_run_id: uuid.UUID | None = None

    @classmethod
    def of(cls, flow_run: Any) -> "ParentIds":
        return cls(flow_run.flow_id, flow_run.deployment_id, flow_run.parent_task_run_id)


def read_parents(session: Session, ids: ParentIds) -> Parents:
    """The flow's and deployment's labels: from the session when it holds every parent, else one
    query. A missing flow, deployment or parent task run is `ObjectNotFoundError`."""
    flow = held_instance(session, orm.Flow, ids.flow_id)
    deployment = held_instance(session, orm.Deployment, ids.deployment_id) if ids.deployment_id is not None else None
    if (
        flow is not None
        and (ids.deployment_id is None or deployment is not None)
        and (ids.parent_task_run_id is None or held_instance(session, orm.TaskRun, ids.parent_task_run_id))
    ):
        return Parents(flow.labels, deployment.labels if deployment is not None else None)
    if session.autoflush:
        session.flush()  # a parent added to the session but not yet written counts
    row = driver_sql.first_mapping(session, _parents_statement(), _parents_parameters(ids, task_id=None))
    assert row is not None  # the anchor always yields a row
    return _parents(row, ids)


def read_parents_and_inbox(
    session: Session, ids: ParentIds, task_id: str
) -> tuple[Parents | None, Recorded | None]:
    """The parents as `read_parents` finds them and the inbox record of `task_id`, in one statement.
    The parents are None when there is a record (the run it answers may have outlived them);
    without one, a missing parent is `ObjectNotFoundError`."""
    row = driver_sql.first_mapping(session, _parents_statement(), _parents_parameters(ids, task_id))
    assert row is not None
    if row["inbox_task_id"] is not None:
        return None, Recorded(row["inbox_name"], row["inbox_outcome"])
    return _parents(row, ids), None


def _parents_parameters(ids: ParentIds, task_id: str | None) -> dict[str, Any]:
    return {**ids._asdict(), "task_id": task_id}


def _parents(row: dict[str, Any], ids: ParentIds) -> Parents:
    if row["flow_id"] is None:
        raise ObjectNotFoundError(f"flow_id: no flow with id {ids.flow_id}")
    if ids.deployment_id is not None and row["deployment_id"] is None:
        raise ObjectNotFoundError(f"deployment_id: no deployment with id {ids.deployment_id}")
    if ids.parent_task_run_id is not None and row["parent_task_run_id"] is None:
        raise ObjectNotFoundError(f"parent_task_run_id: no task run with id {ids.parent_task_run_id}")
    return Parents(row["flow_labels"], row["deployment_labels"])


def new_run_row(values: dict[str, Any], idempotent: bool) -> dict[str, Any]:
    """Every column's value for a new run with these `values` (the defaults filled in)."""
    row = _defaults()
    for key, value in values.items():
        # The plain insert was an ORM flush, which leaves a column set to None to its default;
        # the idempotent one was a Core INSERT, which writes None as given. Both stay so.
        if value is None and row[key] is not None and not idempotent:
            continue
        row[key] = value
    return row


def insert_flow_run(session: Session, values: dict[str, Any], idempotent: bool) -> dict[str, Any] | None:
    """Insert the run; every column's value as written.

    `idempotent`: a run of the same flow with the same idempotency key wins, and None is
    returned (nothing was inserted). Database errors propagate.
    """
    row = new_run_row(values, idempotent)
    if idempotent:
        statement = _insert_unless_known_statement(session.get_bind().dialect.name)
        if driver_sql.first(session, statement, row) is None:
            return None
    else:
        driver_sql.execute(session, table_insert(_runs), row)
    return row


def persistent_flow_run(session: Session, row: dict[str, Any]) -> orm.FlowRun:
    """The session's instance of a run just inserted with these column values, as if loaded."""
    run = _loaded_instance(orm.FlowRun, row)
    make_transient_to_detached(run)
    session.add(run)
    return run


def unattached_flow_run(row: dict[str, Any], state: dict[str, Any] | None) -> orm.FlowRun:
    """A run with these column values and this state, in no session and with no work queue: what
    a response is built from before the run is written (no attribute can load anything)."""
    run = _loaded_instance(orm.FlowRun, row)
    loaded = sa.inspect(run).dict
    loaded["state"] = _loaded_instance(orm.FlowRunState, state) if state is not None else None
    loaded["work_queue"] = None
    return run


def _loaded_instance(model: type[InstanceT], values: dict[str, Any]) -> InstanceT:
    instance = model()
    # Straight into the instance's dict, as a load puts them: no attribute events, no history.
    sa.inspect(instance).dict.update(values)
    return instance


def _defaults() -> dict[str, Any]:
    """What the ORM would fill in for each column left out: its default, else NULL."""
    values = dict(_static_defaults())
    for key, default in _callable_defaults():
        values[key] = default(None)
    return values


@functools.cache
def _static_defaults() -> dict[str, Any]:
    return {
        column.key: None if column.default is None else column.default.arg  # type: ignore[union-attr]
        for column in _runs.columns
        if column.default is None or not column.default.is_callable
    }


@functools.cache
def _callable_defaults() -> tuple[tuple[str, Any], ...]:
    # SQLAlchemy wraps a column's default callable to take the execution context (unused here).
    return tuple(
        (column.key, column.default.arg)  # type: ignore[union-attr]
        for column in _runs.columns
        if column.default is not None and column.default.is_callable
    )


@functools.cache
def _insert_unless_known_statement(dialect: str) -> sa.Insert:
    statement = insert_for_dialect(dialect, _runs)
    statement = statement.on_conflict_do_nothing(index_elements=["flow_id", "idempotency_key"])
    return statement.returning(_runs.c.id)


@functools.cache
def _parents_statement() -> sa.Select[Any]:
    """The flow, the deployment and the inbox record, each outer-joined to a one-row anchor: one
    row always comes back, with NULLs for what does not exist."""
    flow: sa.Table = orm.Flow.__table__  # type: ignore[assignment]
    deployment: sa.Table = orm.Deployment.__table__  # type: ignore[assignment]
    task_run: sa.Table = orm.TaskRun.__table__  # type: ignore[assignment]
    requests: sa.Table = orm.ProcessedRequest.__table__  # type: ignore[assignment]
    anchor = one_row_anchor()
    joined = (
        anchor.outerjoin(flow, flow.c.id == sa.bindparam("flow_id", type_=sa.Uuid()))
        .outerjoin(deployment, deployment.c.id == sa.bindparam("deployment_id", type_=sa.Uuid()))
        .outerjoin(task_run, task_run.c.id == sa.bindparam("parent_task_run_id", type_=sa.Uuid()))
        .outerjoin(requests, requests.c.task_id == sa.bindparam("task_id", type_=sa.String()))
    )
    return sa.select(
        flow.c.id.label("flow_id"), flow.c.labels.label("flow_labels"),
        deployment.c.id.label("deployment_id"), deployment.c.labels.label("deployment_labels"),
        task_run.c.id.label("parent_task_run_id"),
        requests.c.task_id.label("inbox_task_id"), requests.c.name.label("inbox_name"),
        requests.c.outcome.label("inbox_outcome"),
    ).select_from(joined)
