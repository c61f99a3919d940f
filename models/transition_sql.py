"""The SQL of a transition, in SQLAlchemy Core: lock a run with its current state, then write
the new state and the run columns the transition changed.

Every state change runs through here, so it stays off the ORM's unit of work: statements are
built once with bound parameters (SQLAlchemy caches their compiled form and psycopg prepares
them), the locked run is a plain `LockedRun` rather than an identity-mapped instance, and only
the columns that changed are written. When the caller's session already holds the run as an
ORM instance, `models.flow_runs` locks that instance instead and the writes below keep it in
step (see `orchestration.context`).

A flow run is locked with, in the same statement, what the rules would otherwise ask in queries
of their own: the deployment's limit and the run's holdings (slots), and whether the history
already has the proposal's transition id (replays). That prefetch is only trusted when the
current state joined to the run is the one the run points at: on PostgreSQL a `SELECT ... FOR
UPDATE` that waited for another transition returns the run as that transition committed it but
the joined rows as they were when the statement started. Every written transition moves
`state_id`, and holdings and states are only written under the run's lock, so a matching state
means what was read is still the truth; otherwise the state is read again and the rest is
looked up on demand, as before.
"""

import dataclasses
import datetime
import functools
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import driver_sql, orm
from models.database import table_insert
from models.schemas.core import ConcurrencyLimitStrategy, ConcurrencyOptions
from models.schemas.states import StateDetails, StateType

STATE_COLUMNS = ("id", "type", "name", "timestamp", "message", "state_details", "data")
"""The columns of a stored state that make up its `State` (besides its run and bookkeeping)."""


@dataclasses.dataclass(frozen=True)
class RunTables:
    """A kind of run: its table, its states' table, and the run columns a transition touches."""

    run_class: type[orm.FlowRun] | type[orm.TaskRun]
    state_class: type[orm.FlowRunState] | type[orm.TaskRunState]
    state_run_key: str
    """The state's column naming its run."""
    read_columns: tuple[str, ...]
    """Run columns the rules read but never change."""
    written_columns: tuple[str, ...]
    """Run columns a transition may change (the bookkeeping the rules and transforms keep)."""

    @property
    def run(self) -> sa.Table:
        return self.run_class.__table__  # type: ignore[return-value]

    @property
    def state(self) -> sa.Table:
        return self.state_class.__table__  # type: ignore[return-value]


_BOOKKEEPING = (
    "state_id",
    "state_type",
    "state_name",
    "state_timestamp",
    "run_count",
    "expected_start_time",
    "next_scheduled_start_time",
    "start_time",
    "end_time",
    "total_run_time",
    "empirical_policy",
)

FLOW_RUNS = RunTables(
    run_class=orm.FlowRun,
    state_class=orm.FlowRunState,
    state_run_key="flow_run_id",
    read_columns=("id", "deployment_id", "parent_task_run_id", "infrastructure_pid"),
    written_columns=_BOOKKEEPING,
)
TASK_RUNS = RunTables(
    run_class=orm.TaskRun,
    state_class=orm.TaskRunState,
    state_run_key="task_run_id",
    read_columns=("id", "flow_run_id"),
    written_columns=(*_BOOKKEEPING, "flow_run_run_count"),
)


class StateRecord(NamedTuple):
    """A stored state as read with its run (what `orchestration.context.state_from_row` takes)."""

    id: uuid.UUID
    type: StateType
    name: str
    timestamp: datetime.datetime
    message: str | None
    state_details: StateDetails
    data: Any


class LockedRun:
    """A run read under its row lock: the columns the rules read and change, as attributes, and
    its current state as `state`. Not identity-mapped: `write_transition` and `update_run` are
    what persist it.

    `unsaved`: a run this transaction creates, with every column among its values, whose INSERT
    waits for its first write (it goes in the same statement as its first state), or for
    `save_unsaved_run` when no write came."""

    state: StateRecord | None
    unsaved: bool

    def __init__(self, values: Mapping[str, Any], state: StateRecord | None, unsaved: bool = False) -> None:
        self.__dict__.update(values)
        self.state = state
        self.unsaved = unsaved

    def __repr__(self) -> str:
        return f"LockedRun(id={self.__dict__.get('id')!r}, state_type={self.__dict__.get('state_type')!r})"


@dataclasses.dataclass(frozen=True)
class DeploymentSlot:
    """What the slot rules need to know about a run's deployment: whether it exists, its limit
    (None: no limit) and collision options, the run's holding of that limit, and how many
    holdings the run has in all (None: not known)."""

    found: bool = False
    limit_id: uuid.UUID | None = None
    limit: int = 0
    active_slots: int = 0
    concurrency_options: ConcurrencyOptions | None = None
    holding_id: uuid.UUID | None = None
    holdings: int | None = None

    @property
    def collision_strategy(self) -> ConcurrencyLimitStrategy:
        options = self.concurrency_options
        return options.collision_strategy if options is not None else ConcurrencyLimitStrategy.ENQUEUE


class LockedFlowRun(NamedTuple):
    run: LockedRun
    deployment_slot: DeploymentSlot | None
    """Prefetched with the lock; None when it has to be looked up (the lock was contended)."""
    transition_made: bool | None
    """Whether a state of the run carries the transition id asked about; None: not known."""


# -- statements (built once) ------------------------------------------------------------------


def _state_columns(tables: RunTables) -> list[sa.ColumnElement[Any]]:
    return [tables.state.c[name].label(f"state__{name}") for name in STATE_COLUMNS]


def _run_columns(tables: RunTables) -> list[sa.ColumnElement[Any]]:
    return [tables.run.c[name] for name in (*tables.read_columns, *tables.written_columns)]


@functools.cache
def _lock_flow_run_statement() -> sa.Select[Any]:
    run, state = FLOW_RUNS.run, FLOW_RUNS.state
    deployment = orm.Deployment.__table__
    limit = orm.ConcurrencyLimit.__table__
    holding = orm.SlotHolding.__table__
    all_holdings = holding.alias("all_holdings")
    holdings = (
        sa.select(sa.func.count()).where(all_holdings.c.flow_run_id == run.c.id).scalar_subquery()
    )
    history = state.alias("history")
    transition_made = sa.exists().where(
        history.c.flow_run_id == run.c.id,
        history.c.transition_id == sa.bindparam("transition_id", type_=sa.Uuid()),
    )
    return (
        sa.select(
            *_run_columns(FLOW_RUNS),
            *_state_columns(FLOW_RUNS),
            deployment.c.id.label("slot_deployment_id"),
            limit.c.id.label("slot_limit_id"),
            limit.c.limit.label("slot_limit"),
            limit.c.active_slots.label("slot_active_slots"),
            deployment.c.concurrency_options.label("slot_concurrency_options"),
            holding.c.id.label("slot_holding_id"),
            holdings.label("slot_holdings"),
            transition_made.label("transition_made"),
        )
        .select_from(
            run.outerjoin(state, state.c.id == run.c.state_id)
            .outerjoin(deployment, deployment.c.id == run.c.deployment_id)
            .outerjoin(limit, limit.c.id == deployment.c.concurrency_limit_id)
            .outerjoin(
                holding,
                sa.and_(holding.c.concurrency_limit_id == limit.c.id, holding.c.flow_run_id == run.c.id),
            )
        )
        .where(run.c.id == sa.bindparam("run_id"))
        .with_for_update(of=run)
    )


@functools.cache
def _lock_run_statement(tables: RunTables) -> sa.Select[Any]:
    run, state = tables.run, tables.state
    return (
        sa.select(*_run_columns(tables), *_state_columns(tables))
        .select_from(run.outerjoin(state, state.c.id == run.c.state_id))
        .where(run.c.id == sa.bindparam("run_id"))
        .with_for_update(of=run)
    )


@functools.cache
def _read_state_statement(tables: RunTables) -> sa.Select[Any]:
    state = tables.state
    return sa.select(*_state_columns(tables)).where(state.c.id == sa.bindparam("state_id"))


@functools.cache
def _update_run_statement(tables: RunTables) -> sa.Update:
    # The SET clause comes from the parameters given (SQLAlchemy compiles and caches one form
    # per set of columns), so only changed columns are written.
    return sa.update(tables.run).where(tables.run.c.id == sa.bindparam("run_id"))


@functools.lru_cache(maxsize=256)
def _insert_state_and_update_run_statement(tables: RunTables, run_columns: tuple[str, ...]) -> sa.Update:
    """PostgreSQL: `WITH new_state AS (INSERT ...) UPDATE run ...`, one round trip. The run's
    foreign key to its state is checked at the end of the statement, when the state exists."""
    state, run = tables.state, tables.run
    insert = sa.insert(state).values(
        {name: sa.bindparam(f"state__{name}", type_=column.type) for name, column in state.c.items()}
    )
    return (
        sa.update(run)
        .where(run.c.id == sa.bindparam("run_id"))
        .values({name: sa.bindparam(f"run__{name}", type_=run.c[name].type) for name in run_columns})
        .add_cte(insert.cte("new_state"))
    )


@functools.cache
def _insert_run_and_state_statement(tables: RunTables) -> sa.Insert:
    """PostgreSQL: `WITH new_run AS (INSERT run ...) INSERT state ...`, one round trip for a new
    run and its first state; the two rows' foreign keys to each other are checked at the end of
    the statement, when both exist."""
    state, run = tables.state, tables.run
    insert_run = sa.insert(run).values(
        {name: sa.bindparam(f"run__{name}", type_=column.type) for name, column in run.c.items()}
    )
    return (
        sa.insert(state)
        .values({name: sa.bindparam(f"state__{name}", type_=column.type) for name, column in state.c.items()})
        .add_cte(insert_run.cte("new_run"))
    )


# -- locking ----------------------------------------------------------------------------------


# Rows are taken apart by position: the run's columns, then the state's, then (flow runs) the
# deployment slot's, in the order the statements above select them.


def _locked_run(session: Session, tables: RunTables, row: Sequence[Any]) -> tuple[LockedRun, bool]:
    """The run of a locked row, and whether its joined state is the one it points at (if not, the
    lock waited for another transition and the state is read again)."""
    names = (*tables.read_columns, *tables.written_columns)
    values = dict(zip(names, row))
    state = row[len(names) : len(names) + len(STATE_COLUMNS)]
    state_id = values["state_id"]
    if state_id is None or state[0] == state_id:
        return LockedRun(values, StateRecord(*state) if state[0] is not None else None), True
    statement = _read_state_statement(tables)
    current = session.connection().execute(statement, {"state_id": state_id}).one_or_none()
    return LockedRun(values, StateRecord(*current) if current is not None else None), False


def lock_flow_run(
    session: Session, flow_run_id: uuid.UUID, transition_id: uuid.UUID | None = None
) -> LockedFlowRun | None:
    """Lock the flow run (`FOR UPDATE`; SQLite's transaction already holds the write lock) and
    read it with its current state, its deployment slot and whether its history already has a
    state with `transition_id`; None if there is no such run.

    Runs on the session's connection: the caller flushes the session first if it autoflushes.
    """
    parameters = {"run_id": flow_run_id, "transition_id": transition_id}
    row = driver_sql.first(session, _lock_flow_run_statement(), parameters)
    if row is None:
        return None
    run, consistent = _locked_run(session, FLOW_RUNS, row)
    if not consistent:
        return LockedFlowRun(run, None, None)
    deployment_id, limit_id, limit, active_slots, options, holding_id, holdings, transition_made = row[-8:]
    if deployment_id is None:
        return LockedFlowRun(run, DeploymentSlot(holdings=holdings), bool(transition_made))
    slot = DeploymentSlot(
        found=True,
        limit_id=limit_id,
        limit=limit or 0,
        active_slots=active_slots or 0,
        concurrency_options=options,
        holding_id=holding_id,
        holdings=holdings,
    )
    return LockedFlowRun(run, slot, bool(transition_made))


def lock_task_run(session: Session, task_run_id: uuid.UUID) -> LockedRun | None:
    """Lock the task run and read it with its current state; None if there is no such run."""
    row = driver_sql.first(session, _lock_run_statement(TASK_RUNS), {"run_id": task_run_id})
    if row is None:
        return None
    return _locked_run(session, TASK_RUNS, row)[0]


# -- writing ----------------------------------------------------------------------------------


# The writes run on the session's connection rather than `Session.execute`, which would first
# autoflush: an ORM run being orchestrated is dirty with exactly the values written here, and the
# caller marks them committed afterwards (see `orchestration.context`).


def write_transition(
    session: Session, tables: RunTables, run: Any, state: dict[str, Any], run_changes: dict[str, Any]
) -> None:
    """Insert the state (all its columns given) and update the run's changed columns (its
    `state_id` among them, `updated` included). An unsaved run is inserted with the state instead
    (its attributes already hold the changes)."""
    connection = session.connection()
    unsaved = _is_unsaved(run)
    if unsaved:
        run.unsaved = False
    if connection.dialect.name == "postgresql":
        parameters = {f"state__{name}": state.get(name) for name in tables.state.c.keys()}
        statement: sa.Insert | sa.Update
        if unsaved:
            parameters.update({f"run__{name}": getattr(run, name) for name in tables.run.c.keys()})
            statement = _insert_run_and_state_statement(tables)
        else:
            parameters.update({f"run__{name}": value for name, value in run_changes.items()})
            parameters["run_id"] = run.id
            statement = _insert_state_and_update_run_statement(tables, tuple(run_changes))
        driver_sql.execute(session, statement, parameters)
        return
    # SQLite has no data-modifying CTEs: separate statements (the database is local, no round
    # trips); an unsaved run goes first, pointing at no state until the update.
    if unsaved:
        _insert_run(session, tables, run, state_id=None)
    connection.execute(table_insert(tables.state), state)
    connection.execute(_update_run_statement(tables), {"run_id": run.id, **run_changes})


def update_run(session: Session, tables: RunTables, run: Any, changes: dict[str, Any]) -> None:
    """Write the given run columns (`updated` included by the caller); an unsaved run is inserted
    whole (its attributes already hold the changes)."""
    if save_unsaved_run(session, tables, run):
        return
    session.connection().execute(_update_run_statement(tables), {"run_id": run.id, **changes})


def save_unsaved_run(session: Session, tables: RunTables, run: Any) -> bool:
    """Insert an unsaved run that no write has saved yet; whether it was one."""
    if not _is_unsaved(run):
        return False
    run.unsaved = False
    _insert_run(session, tables, run)
    return True


def _is_unsaved(run: Any) -> bool:
    return isinstance(run, LockedRun) and run.unsaved


def _insert_run(session: Session, tables: RunTables, run: LockedRun, **overrides: Any) -> None:
    values = {name: getattr(run, name) for name in tables.run.c.keys()}
    values.update(overrides)
    driver_sql.execute(session, table_insert(tables.run), values)
