"""The SQL of a transition: read a run's snapshot without a lock, then write the outcome in one
statement that applies it only if the run still points at the state the snapshot saw.

The read (one statement) brings what the rules need: the run's bookkeeping and current state,
for a flow run its deployment's limit, the run's holdings and whether its history already has
the proposal's transition id, for a task run its flow run; and, for the worker, the request's
inbox record.

On PostgreSQL the write is one statement: the run's UPDATE (or, when no column changes, a locking
SELECT) carries the compare-and-set on `state_id` (and, for a flow run, on `updated`: a run
changed meanwhile by `update_flow_run` — its retry policy, its infrastructure pid — is decided
again, as it would be under Prefect's row lock), and every other part — the new state, the slot
taken or given back, the cache entry, the inbox row — only happens when that matched. So the run's
row is locked for that one statement, not while the rules run. When the compare-and-set matched
but a slot it needed was taken meanwhile, or a copy of the request recorded first, the statement
raises a serialization failure (`flowruns_transition_conflict`, migration 0005) so that nothing
of it stays; either way the caller reads and decides again. Run in autocommit mode, the
statement is also the commit.

SQLite's transactions hold the database's write lock from their first statement (BEGIN
IMMEDIATE): the snapshot cannot go stale, and the write is a few plain statements.
"""

import dataclasses
import functools
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from models import driver_sql, orm
from models.concurrency_slots import acquire_slot, release_flow_run_slots
from models.database import dialect_name, held_instance, insert_for_dialect, one_row_anchor, table_insert
from models.requests import Recorded, record_outcome
from models.run_snapshots import (
    DeploymentSlot,
    EnclosingFlowRun,
    FlowRunSnapshot,
    InboxRecord,
    StateRecord,
    TaskRunSnapshot,
    TransitionWrite,
    WriteResult,
)
from models.task_run_state_cache import cache_key_digest, insert_cache_entry
from models.types import Timestamp, now_utc

CONFLICT_FUNCTION = "flowruns_transition_conflict"
"""Raises SQLSTATE 40001 when its argument is true (created by migration 0005)."""
CONFLICT_SQLSTATE = "40001"


@dataclasses.dataclass(frozen=True)
class RunTables:
    """A kind of run: its table, its states' table, and the columns the rules read but never change."""

    run_class: type[orm.FlowRun] | type[orm.TaskRun]
    state_class: type[orm.FlowRunState] | type[orm.TaskRunState]
    state_run_key: str
    """The state's column naming its run."""
    read_columns: tuple[str, ...]
    snapshot_class: type[FlowRunSnapshot] | type[TaskRunSnapshot]

    @property
    def run(self) -> sa.Table:
        return self.run_class.__table__  # type: ignore[return-value]

    @property
    def state(self) -> sa.Table:
        return self.state_class.__table__  # type: ignore[return-value]

    @property
    def snapshot_columns(self) -> tuple[str, ...]:
        return (*self.read_columns, *self.snapshot_class.WRITTEN)


FLOW_RUNS = RunTables(
    run_class=orm.FlowRun,
    state_class=orm.FlowRunState,
    state_run_key="flow_run_id",
    read_columns=("id", "deployment_id", "parent_task_run_id", "infrastructure_pid", "updated"),
    snapshot_class=FlowRunSnapshot,
)
TASK_RUNS = RunTables(
    run_class=orm.TaskRun,
    state_class=orm.TaskRunState,
    state_run_key="task_run_id",
    read_columns=("id", "flow_run_id"),
    snapshot_class=TaskRunSnapshot,
)

_requests: sa.Table = orm.ProcessedRequest.__table__  # type: ignore[assignment]
_limits: sa.Table = orm.ConcurrencyLimit.__table__  # type: ignore[assignment]
_holdings: sa.Table = orm.SlotHolding.__table__  # type: ignore[assignment]
_cache: sa.Table = orm.TaskRunStateCache.__table__  # type: ignore[assignment]


# -- reading ----------------------------------------------------------------------------------


def _run_and_state(tables: RunTables, anchor: sa.Subquery) -> tuple[list[sa.ColumnElement[Any]], sa.FromClause]:
    run, state = tables.run, tables.state
    columns = [run.c[name].label(f"run__{name}") for name in tables.snapshot_columns]
    columns += [state.c[name].label(f"state__{name}") for name in StateRecord.FIELDS]
    columns += [_requests.c.name.label("inbox__name"), _requests.c.outcome.label("inbox__outcome"),
                _requests.c.task_id.label("inbox__task_id")]
    joined = (
        anchor.outerjoin(run, run.c.id == sa.bindparam("run_id", type_=sa.Uuid()))
        .outerjoin(state, state.c.id == run.c.state_id)
        .outerjoin(_requests, _requests.c.task_id == sa.bindparam("task_id", type_=sa.String()))
    )
    return columns, joined


@functools.cache
def _read_flow_run_statement() -> sa.Select[Any]:
    run, history = FLOW_RUNS.run, FLOW_RUNS.state.alias("history")
    deployment: sa.Table = orm.Deployment.__table__  # type: ignore[assignment]
    all_holdings = _holdings.alias("all_holdings")
    columns, joined = _run_and_state(FLOW_RUNS, one_row_anchor())
    holdings = sa.select(sa.func.count()).where(all_holdings.c.flow_run_id == run.c.id).scalar_subquery()
    transition_made = sa.exists().where(
        history.c.flow_run_id == run.c.id,
        history.c.transition_id == sa.bindparam("transition_id", type_=sa.Uuid()),
    )
    columns += [
        deployment.c.id.label("slot__deployment_id"),
        _limits.c.id.label("slot__limit_id"),
        _limits.c.limit.label("slot__limit"),
        _limits.c.active.label("slot__active"),
        _limits.c.active_slots.label("slot__active_slots"),
        deployment.c.concurrency_options.label("slot__concurrency_options"),
        _holdings.c.id.label("slot__holding_id"),
        holdings.label("slot__holdings"),
        transition_made.label("transition_made"),
    ]
    joined = (
        joined.outerjoin(deployment, deployment.c.id == run.c.deployment_id)
        .outerjoin(_limits, _limits.c.id == deployment.c.concurrency_limit_id)
        .outerjoin(_holdings, sa.and_(_holdings.c.concurrency_limit_id == _limits.c.id,
                                      _holdings.c.flow_run_id == run.c.id))
    )
    return sa.select(*columns).select_from(joined)


@functools.cache
def _read_task_run_statement() -> sa.Select[Any]:
    run = TASK_RUNS.run
    flow_run, flow_state = FLOW_RUNS.run.alias("flow_run"), FLOW_RUNS.state.alias("flow_state")
    columns, joined = _run_and_state(TASK_RUNS, one_row_anchor())
    columns += [
        flow_run.c.id.label("flow__id"),
        flow_run.c.run_count.label("flow__run_count"),
        flow_state.c.type.label("flow__state_type"),
        flow_state.c.state_details.label("flow__state_details"),
    ]
    joined = (
        joined.outerjoin(flow_run, flow_run.c.id == run.c.flow_run_id)
        .outerjoin(flow_state, flow_state.c.id == flow_run.c.state_id)
    )
    return sa.select(*columns).select_from(joined)


def _prefixed(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {key[len(prefix):]: value for key, value in row.items() if key.startswith(prefix)}


def _state_record(row: dict[str, Any]) -> StateRecord | None:
    values = _prefixed(row, "state__")
    return StateRecord(**values) if values["id"] is not None else None


def _recorded(row: dict[str, Any]) -> Recorded | None:
    if row["inbox__task_id"] is None:
        return None
    return Recorded(row["inbox__name"], row["inbox__outcome"])


def read_flow_run_snapshot(
    session: Session, flow_run_id: uuid.UUID, transition_id: uuid.UUID | None, task_id: str | None = None
) -> tuple[FlowRunSnapshot | None, Recorded | None]:
    """The flow run as it is now (None if there is no such run), and the inbox record of `task_id`."""
    parameters = {"run_id": flow_run_id, "transition_id": transition_id, "task_id": task_id}
    row = driver_sql.first_mapping(session, _read_flow_run_statement(), parameters)
    assert row is not None  # the anchor always yields a row
    if row["run__id"] is None:
        return None, _recorded(row)
    slot = _prefixed(row, "slot__")
    deployment_slot = DeploymentSlot(
        found=slot["deployment_id"] is not None,
        limit_id=slot["limit_id"],
        limit=slot["limit"] or 0,
        active=bool(slot["active"]) if slot["limit_id"] is not None else True,
        active_slots=slot["active_slots"] or 0,
        concurrency_options=slot["concurrency_options"],
        holding_id=slot["holding_id"],
        holdings=slot["holdings"] or 0,
    )
    snapshot = FlowRunSnapshot(
        **_prefixed(row, "run__"),
        state=_state_record(row),
        deployment_slot=deployment_slot,
        transition_made=bool(row["transition_made"]),
    )
    return snapshot, _recorded(row)


def read_task_run_snapshot(
    session: Session, task_run_id: uuid.UUID, task_id: str | None = None
) -> tuple[TaskRunSnapshot | None, Recorded | None]:
    """The task run as it is now, with its flow run (None if there is no such task run), and the
    inbox record of `task_id`. The cache is looked up apart, only for a proposal that asks."""
    row = driver_sql.first_mapping(session, _read_task_run_statement(), {"run_id": task_run_id, "task_id": task_id})
    assert row is not None
    if row["run__id"] is None:
        return None, _recorded(row)
    flow = _prefixed(row, "flow__")
    enclosing = None if flow["id"] is None else EnclosingFlowRun(**flow)
    snapshot = TaskRunSnapshot(**_prefixed(row, "run__"), state=_state_record(row), flow_run=enclosing,
                               cached_state=None)
    return snapshot, _recorded(row)


def new_flow_run_snapshot(row: dict[str, Any], write_with_first_state: bool) -> FlowRunSnapshot:
    """The snapshot of a run this transaction creates (every column's value in `row`, no state).
    `write_with_first_state`: it is not inserted yet; its INSERT goes with its first state."""
    values = {name: row[name] for name in FLOW_RUNS.snapshot_columns} | {"updated": None}
    return FlowRunSnapshot(**values, state=None, deployment_slot=DeploymentSlot(), transition_made=False,
                           new_row=row if write_with_first_state else None)


def new_task_run_snapshot(row: orm.TaskRun) -> TaskRunSnapshot:
    """The snapshot of a task run this transaction created (no state yet)."""
    values = {name: getattr(row, name) for name in TASK_RUNS.snapshot_columns}
    return TaskRunSnapshot(**values, state=None, flow_run=None, cached_state=None)


def lock_run(session: Session, tables: RunTables, run_id: uuid.UUID) -> None:
    """Take the run's row lock, held until the transaction ends (SQLite's writers already take turns)."""
    driver_sql.first(session, _lock_run_statement(tables), {"run_id": run_id})


@functools.cache
def _lock_run_statement(tables: RunTables) -> sa.Select[Any]:
    run = tables.run
    return sa.select(run.c.id).where(run.c.id == sa.bindparam("run_id", type_=sa.Uuid())).with_for_update()


# -- writing ----------------------------------------------------------------------------------


def write_transition(session: Session, tables: RunTables, write: TransitionWrite) -> WriteResult:
    """Apply `write` if the run still points at `write.seen_state_id`; see the module docstring."""
    if dialect_name(session) == "postgresql":
        return _write_in_one_statement(session, tables, write)
    return _write_in_the_transaction(session, tables, write)


def is_conflict(error: BaseException) -> bool:
    """Whether a database error is the write's own conflict (or any serialization failure)."""
    return getattr(getattr(error, "orig", None), "sqlstate", None) == CONFLICT_SQLSTATE


def _write_in_one_statement(session: Session, tables: RunTables, write: TransitionWrite) -> WriteResult:
    if write.new_run is not None:
        # A run this transaction creates: no one else can see it, nothing to compare.
        if write.state is None and write.inbox is None:
            driver_sql.execute(session, table_insert(tables.run), write.new_run)
            return WriteResult(applied=True)
        values = {f"run__{name}": value for name, value in write.new_run.items()}
        if write.state is not None:
            values.update(_state_parameters(tables, write.state))
        if write.inbox is not None:
            values.update(_inbox_parameters(write.inbox), now=now_utc())
        statement = _insert_new_run_statement(tables, write.state is not None, write.inbox is not None)
        driver_sql.execute(session, statement, values)
        return WriteResult(applied=True)
    shape = _Shape(
        tables=tables,
        run_columns=tuple(sorted(write.run_changes)),
        versioned=write.seen_updated is not None,
        state=write.state is not None,
        acquire=write.slots.acquire_limit_id is not None,
        release=write.slots.release,
        cache=write.cache_entry is not None,
        inbox=write.inbox is not None,
    )
    row = driver_sql.first_mapping(session, _cas_statement(shape), _cas_parameters(tables, write))
    assert row is not None
    return WriteResult(applied=bool(row["applied"]), slots_released=int(row["released"] or 0))


@dataclasses.dataclass(frozen=True)
class _Shape:
    """Which parts a compare-and-set statement has (one compiled statement per shape)."""

    tables: RunTables
    run_columns: tuple[str, ...]
    versioned: bool
    state: bool
    acquire: bool
    release: bool
    cache: bool
    inbox: bool


def _cas_parameters(tables: RunTables, write: TransitionWrite) -> dict[str, Any]:
    now = now_utc()
    values: dict[str, Any] = {"run_id": write.run_id, "seen_state_id": write.seen_state_id, "now": now}
    if write.seen_updated is not None:
        values["seen_updated"] = write.seen_updated
    values.update({f"run__{name}": value for name, value in write.run_changes.items()})
    if write.state is not None:
        values.update(_state_parameters(tables, write.state))
    if write.slots.acquire_limit_id is not None:
        values.update(limit_id=write.slots.acquire_limit_id, holding_id=write.slots.holding_id)
    if write.cache_entry is not None:
        entry = write.cache_entry
        values.update(cache_id=uuid.uuid4(), cache_key=entry.cache_key, cache_key_digest=cache_key_digest(entry.cache_key),
                      cache_expiration=entry.cache_expiration, cache_state_id=entry.task_run_state_id)
    if write.inbox is not None:
        values.update(_inbox_parameters(write.inbox))
    return values


def _state_parameters(tables: RunTables, state: dict[str, Any]) -> dict[str, Any]:
    return {f"state__{name}": state.get(name) for name in tables.state.c.keys()}


def _inbox_parameters(inbox: InboxRecord) -> dict[str, Any]:
    return {"task_id": inbox.task_id, "task_name": inbox.name, "outcome": inbox.outcome}


def _inbox_record() -> sa.Select[Any]:
    """The request's inbox row, from its parameters (`_inbox_parameters` and `now`)."""
    return sa.select(
        sa.bindparam("task_id", type_=sa.String()), sa.bindparam("task_name", type_=sa.String()),
        sa.bindparam("outcome", type_=_requests.c.outcome.type), sa.bindparam("now", type_=Timestamp()),
    )


def _inbox_cte(record: sa.Select[Any]) -> sa.CTE:
    """Insert `record` into the inbox unless a copy of the request recorded first; returns its task
    id only when this statement inserted it."""
    insert = insert_for_dialect("postgresql", _requests).from_select(["task_id", "name", "outcome", "created"], record)
    return insert.on_conflict_do_nothing(index_elements=["task_id"]).returning(_requests.c.task_id).cte("inbox")


def _raise_if(conflict: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
    """`flowruns_transition_conflict(conflict)`: the whole statement fails (40001) when it is true."""
    return getattr(sa.func, CONFLICT_FUNCTION)(conflict, type_=sa.Boolean())


@functools.lru_cache(maxsize=512)
def _cas_statement(shape: _Shape) -> sa.Select[Any]:
    """The compare-and-set write of one shape (see the module docstring)."""
    run, state = shape.tables.run, shape.tables.state
    matches = sa.and_(
        run.c.id == sa.bindparam("run_id", type_=sa.Uuid()),
        run.c.state_id.is_not_distinct_from(sa.bindparam("seen_state_id", type_=sa.Uuid())),
    )
    if shape.versioned:
        matches = sa.and_(matches, run.c.updated == sa.bindparam("seen_updated", type_=Timestamp()))
    if shape.run_columns:
        changes = {name: sa.bindparam(f"run__{name}", type_=run.c[name].type) for name in shape.run_columns}
        run_cas = sa.update(run).where(matches).values(changes).returning(run.c.id).cte("run_cas")
    else:
        run_cas = sa.select(run.c.id).where(matches).with_for_update().cte("run_cas")
    matched = sa.exists(sa.select(run_cas.c.id))
    now = sa.bindparam("now", type_=Timestamp())
    ctes: list[sa.CTE] = [run_cas]
    conflicts: list[sa.ColumnElement[bool]] = []
    released_sum: sa.ColumnElement[Any] = sa.literal_column("0")
    if shape.state:
        values = [sa.bindparam(f"state__{name}", type_=column.type) for name, column in state.c.items()]
        ctes.append(sa.insert(state).from_select(list(state.c.keys()), sa.select(*values).where(matched))
                    .returning(state.c.id).cte("new_state"))
    if shape.acquire:
        taken = (
            sa.update(_limits)
            .where(_limits.c.id == sa.bindparam("limit_id", type_=sa.Uuid()), _limits.c.active,
                   _limits.c.active_slots + 1 <= _limits.c.limit, matched)
            .values(active_slots=_limits.c.active_slots + 1, updated=now)
            .returning(_limits.c.id)
            .cte("slot_taken")
        )
        holding = sa.insert(_holdings).from_select(
            ["id", "concurrency_limit_id", "flow_run_id", "acquired_at"],
            sa.select(sa.bindparam("holding_id", type_=sa.Uuid()), taken.c.id,
                      sa.bindparam("run_id", type_=sa.Uuid()), now),
        ).returning(_holdings.c.id).cte("holding")
        ctes += [taken, holding]
        conflicts.append(~sa.exists(sa.select(holding.c.id)))
    if shape.release:
        released = (
            sa.delete(_holdings)
            .where(_holdings.c.flow_run_id == sa.bindparam("run_id", type_=sa.Uuid()), matched)
            .returning(_holdings.c.concurrency_limit_id)
            .cte("released")
        )
        counts = (sa.select(released.c.concurrency_limit_id, sa.func.count().label("released"))
                  .group_by(released.c.concurrency_limit_id).cte("release_counts"))
        slots = _limits.c.active_slots
        decremented = (
            sa.update(_limits)
            .where(_limits.c.id == counts.c.concurrency_limit_id)
            .values(active_slots=sa.case((slots > counts.c.released, slots - counts.c.released), else_=0),
                    updated=now)
            .returning(counts.c.released)
            .cte("decremented")
        )
        ctes += [released, counts, decremented]
        released_sum = sa.select(sa.func.coalesce(sa.func.sum(decremented.c.released), 0)).scalar_subquery()
    if shape.cache:
        entry = sa.select(
            sa.bindparam("cache_id", type_=sa.Uuid()), now, now, sa.bindparam("cache_key", type_=sa.String()),
            sa.bindparam("cache_key_digest", type_=sa.String()),
            sa.bindparam("cache_expiration", type_=Timestamp()), sa.bindparam("cache_state_id", type_=sa.Uuid()),
        ).where(matched)
        ctes.append(sa.insert(_cache).from_select(
            ["id", "created", "updated", "cache_key", "cache_key_digest", "cache_expiration", "task_run_state_id"],
            entry,
        ).returning(_cache.c.id).cte("cached"))
    if shape.inbox:
        inbox = _inbox_cte(_inbox_record().where(matched))
        ctes.append(inbox)
        conflicts.append(~sa.exists(sa.select(inbox.c.task_id)))
    applied = sa.select(sa.func.count()).select_from(run_cas).scalar_subquery()
    conflict = sa.and_(applied == 1, sa.or_(*conflicts)) if conflicts else sa.false()
    return sa.select(
        applied.label("applied"),
        released_sum.label("released"),
        _raise_if(conflict).label("checked"),
    ).add_cte(*ctes)


@functools.cache
def _insert_new_run_statement(tables: RunTables, state: bool, inbox: bool) -> sa.Executable:
    """PostgreSQL: a new run, its first state and the request's inbox row in one statement (the
    run's INSERT as a CTE; the rows' foreign keys to each other are checked at the end of the
    statement, when both exist). With the inbox row, a copy of the request that recorded first
    makes the statement raise the conflict, so nothing of it stays."""
    state_table, run = tables.state, tables.run
    insert_run = sa.insert(run).values(
        {name: sa.bindparam(f"run__{name}", type_=column.type) for name, column in run.c.items()}
    )
    insert_state = sa.insert(state_table).values(
        {name: sa.bindparam(f"state__{name}", type_=column.type) for name, column in state_table.c.items()}
    )
    if not inbox:
        return insert_state.add_cte(insert_run.cte("new_run"))
    ctes = [insert_run.cte("new_run")]
    if state:
        ctes.append(insert_state.returning(state_table.c.id).cte("new_state"))
    recorded = _inbox_cte(_inbox_record())
    ctes.append(recorded)
    return sa.select(_raise_if(~sa.exists(sa.select(recorded.c.task_id))).label("checked")).add_cte(*ctes)


def _write_in_the_transaction(session: Session, tables: RunTables, write: TransitionWrite) -> WriteResult:
    """SQLite: the caller's transaction holds the database's write lock since it read the run, so
    nothing can have moved; the comparison is still made (a SELECT), and the parts that can refuse
    (the comparison, the inbox row) come before anything is written, so a refusal writes nothing.
    Then plain statements, in an order the foreign keys accept."""
    connection = session.connection()
    if write.new_run is None:
        current = connection.execute(
            sa.select(tables.run.c.state_id).where(tables.run.c.id == write.run_id)
        ).first()
        if current is None or current.state_id != write.seen_state_id:
            return WriteResult(applied=False)
    if write.inbox is not None and not record_outcome(session, write.inbox.task_id, write.inbox.name,
                                                      write.inbox.outcome):
        return WriteResult(applied=False)
    if write.new_run is not None:
        connection.execute(table_insert(tables.run), {**write.new_run, "state_id": None})
    if write.state is not None:
        connection.execute(table_insert(tables.state), write.state)
    changes = dict(write.run_changes)
    if write.new_run is not None and write.state is not None:
        changes["state_id"] = write.state["id"]
    if changes:
        connection.execute(_update_run_statement(tables), {"run_id": write.run_id, **changes})
    if write.slots.acquire_limit_id is not None:
        if acquire_slot(session, write.slots.acquire_limit_id, write.run_id, write.slots.holding_id) is None:
            # Cannot happen under the write lock; raised, so the caller's transaction rolls back.
            raise RuntimeError(f"run {write.run_id}: its slot was taken under the write lock")
    released = release_flow_run_slots(session, write.run_id) if write.slots.release else 0
    if write.cache_entry is not None:
        entry = write.cache_entry
        insert_cache_entry(session, entry.cache_key, entry.cache_expiration, entry.task_run_state_id)
    return WriteResult(applied=True, slots_released=released)


@functools.cache
def _update_run_statement(tables: RunTables) -> sa.Update:
    # The SET clause comes from the parameters given (one compiled form per set of columns).
    return sa.update(tables.run).where(tables.run.c.id == sa.bindparam("run_id"))


# -- the session's own instance ---------------------------------------------------------------


def keep_session_instance_in_step(
    session: Session, tables: RunTables, run_id: uuid.UUID, changes: dict[str, Any], state: dict[str, Any] | None
) -> None:
    """When the session holds the run as an ORM instance, mark what was just written as committed
    on it, as if the session had loaded it so (a flush has nothing to write again), and point it
    at its new state, a persistent row."""
    instance = held_instance(session, tables.run_class, run_id)
    if instance is None:
        return
    for key, value in changes.items():
        set_committed_value(instance, key, value)
    if state is not None:
        row = tables.state_class()
        sa.inspect(row).dict.update(state)  # as a load fills it: no attribute events
        make_transient_to_detached(row)
        session.add(row)
        set_committed_value(instance, "state", row)

