"""The orchestration context: one proposed transition of one run, and what the rules decided.

All side effects share the caller's session (one transaction). The run is what the caller locked:
a `LockedRun` read by `models.transition_sql`, or the session's ORM instance when it already held
one; rules read and change its attributes the same way. The three states are `State` schemas. The
deployment (with its limit and the run's holdings) comes with the lock or is loaded at most once,
on demand; so is a task run's flow run.

Writes go through SQLAlchemy Core (`models.transition_sql`): the state and the run columns that
changed when the proposal is validated, then whatever a rule changed on the run afterwards, once
every rule has exited. An ORM run is kept in step (its written columns marked as committed, its
`state` pointing at the new row), so the session never writes them a second time.
"""

import dataclasses
import datetime
import functools
import logging
import uuid
from typing import Any, ClassVar, Generic, Self, TypeVar

import pydantic
import sqlalchemy as sa
from pydantic_core import to_jsonable_python
from sqlalchemy.orm import Session, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from models import orm
from models.database import held_instance
from models.errors import ValidationError
from models.schemas.base import deep_copy
from models.schemas.responses import (
    SetStateStatus,
    StateAbortDetails,
    StateAcceptDetails,
    StateRejectDetails,
    StateWaitDetails,
)
from models.schemas.states import State, StateType
from models.task_runs import EnclosingFlowRun, read_enclosing_flow_run
from models.transition_sql import (
    FLOW_RUNS,
    TASK_RUNS,
    DeploymentSlot,
    RunTables,
    StateRecord,
    update_run,
    write_transition,
)
from models.types import now_utc

logger = logging.getLogger(__name__)

StateResponseDetails = StateAcceptDetails | StateRejectDetails | StateAbortDetails | StateWaitDetails
RunT = TypeVar("RunT", orm.FlowRun, orm.TaskRun)

UNPERSISTED = "unpersisted"

__all__ = ["DeploymentSlot", "FlowOrchestrationContext", "TaskOrchestrationContext"]


def has_persisted_result(data: Any) -> bool:
    """Whether state data is persisted result metadata (a dict not marked unpersisted)."""
    return isinstance(data, dict) and data.get("type") != UNPERSISTED


def version_tuple(version: Any) -> tuple[int, ...]:
    """`"0.8.4"` (or a `packaging` Version) as `(0, 8, 4)`; non-numeric parts count as 0."""
    parts = str(version).split("+")[0].split(".")
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in parts)


def update_run_policy(run: Any, **changes: Any) -> None:
    """Assign the run a new `empirical_policy` with these fields changed (a JSON column is only
    saved when a new object is assigned)."""
    run.empirical_policy = deep_copy(run.empirical_policy.model_copy(update=changes))


def locked_current_state(session: Session, run: Any) -> State | None:
    """The current state of a run just locked, as a `State`.

    On PostgreSQL a `SELECT ... FOR UPDATE` that waited for another transition returns the run
    row as that transition committed it, but the rows joined to it as they were before (here:
    no state, or the previous one). The run's `state_id` is then the truth: the state is read
    again by id. Costs a query only when the lock was contended. (A `LockedRun` was read that
    way already.)
    """
    row = run.state
    stale = run.state_id is not None and (row is None or row.id != run.state_id)
    if stale and isinstance(run, (orm.FlowRun, orm.TaskRun)):
        state_type = orm.FlowRunState if isinstance(run, orm.FlowRun) else orm.TaskRunState
        row = session.get(state_type, run.state_id, populate_existing=True)
        set_committed_value(run, "state", row)
    return state_from_row(row) if row is not None else None


def state_from_row(row: Any) -> State:
    """The `State` schema of a stored state (an ORM row or a `StateRecord`), with its inline data."""
    return State(
        id=row.id,
        type=row.type,
        name=row.name,
        timestamp=row.timestamp,
        message=row.message,
        data=row.data,
        state_details=deep_copy(row.state_details),
    )


@dataclasses.dataclass(eq=False)
class OrchestrationContext(Generic[RunT]):
    """A transition being governed. Rules change it only through their verbs."""

    session: Session
    run: RunT
    initial_state: State | None
    proposed_state: State | None
    validated_state: State | None = None
    response_status: SetStateStatus = SetStateStatus.ACCEPT
    response_details: StateResponseDetails = dataclasses.field(default_factory=StateAcceptDetails)
    orchestration_error: Exception | None = None
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    client_version: str | None = None
    rule_signature: list[str] = dataclasses.field(default_factory=list)
    finalization_signature: list[str] = dataclasses.field(default_factory=list)
    # Loaded on demand (or with the lock) and shared by every safe copy of this context.
    lookups: dict[str, Any] = dataclasses.field(default_factory=dict)

    TABLES: ClassVar[RunTables]

    def __post_init__(self) -> None:
        # What the database holds for the run's written columns: what a write compares against.
        self._stored = self._run_values()

    @property
    def initial_state_type(self) -> StateType | None:
        return self.initial_state.type if self.initial_state else None

    @property
    def proposed_state_type(self) -> StateType | None:
        return self.proposed_state.type if self.proposed_state else None

    @property
    def validated_state_type(self) -> StateType | None:
        return self.validated_state.type if self.validated_state else None

    @property
    def run_settings(self) -> Any:
        return self.run.empirical_policy

    def api_version_at_least(self, version: str) -> bool:
        """True when the caller's api-version is unknown (current clients) or >= `version`."""
        api_version = self.parameters.get("api-version")
        return api_version is None or version_tuple(api_version) >= version_tuple(version)

    def safe_copy(self) -> Self:
        """A copy for rule hooks: replacing its fields changes nothing, but the states' details
        are shared, so editing `proposed_state.state_details` edits the real proposal."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.initial_state = self.initial_state.model_copy() if self.initial_state else None
        clone.proposed_state = self.proposed_state.model_copy() if self.proposed_state else None
        clone.validated_state = self.validated_state.model_copy() if self.validated_state else None
        clone.parameters = dict(self.parameters)
        return clone

    def entry_context(self) -> tuple[State | None, State | None, Self]:
        clone = self.safe_copy()
        return clone.initial_state, clone.proposed_state, clone

    def exit_context(self) -> tuple[State | None, State | None, Self]:
        clone = self.safe_copy()
        return clone.initial_state, clone.validated_state, clone

    def validate_proposed_state(self) -> None:
        """Write the proposed state with the run's changes (or keep the current state when there
        is no proposal).

        A proposal that cannot be stored aborts the transition; database errors propagate so
        the caller's transaction rolls back (and the request may be retried).
        """
        if self.proposed_state is None:
            current = self.run.state
            self.validated_state = state_from_row(current) if current is not None else None
            return
        try:
            row = self._state_values(self.proposed_state)
        except Exception as error:  # an unstorable proposal: nothing is written
            logger.exception("could not store the proposed state")
            self.proposed_state = None
            self.response_status = SetStateStatus.ABORT
            self.response_details = StateAbortDetails(reason=f"Error validating state: {error!r}")
            self.validate_proposed_state()
            return
        self.run.state_id = row["id"]
        changes = self._run_changes()
        changes["updated"] = row["updated"]
        # database errors propagate: the caller's transaction rolls back
        write_transition(self.session, self.TABLES, self.run, row, changes)
        self._stored.update(changes)
        self._attach_state(row)
        self._keep_instance_in_step(changes, row)
        validated = state_from_row(self.run.state)
        validated.data = result_data(self.proposed_state.data)
        self.validated_state = validated

    def save_run(self) -> None:
        """Write what rules changed on the run after the state was written (or on a transition
        that wrote none); nothing when nothing changed."""
        changes = self._run_changes()
        if not changes:
            return
        changes["updated"] = now_utc()
        update_run(self.session, self.TABLES, self.run, changes)
        self._stored.update(changes)
        self._keep_instance_in_step(changes)

    def _run_values(self) -> dict[str, Any]:
        run = self.run
        return {name: getattr(run, name) for name in self.TABLES.written_columns}

    def _run_changes(self) -> dict[str, Any]:
        stored = self._stored
        return {
            name: value
            for name, value in self._run_values().items()
            if value is not stored[name] and value != stored[name]
        }

    def _attach_state(self, row: dict[str, Any]) -> None:
        """Point the run at the state just written (an ORM run: see `_keep_instance_in_step`)."""
        if not isinstance(self.run, orm.Base):
            self.run.state = StateRecord(**{name: row[name] for name in StateRecord._fields})

    def _keep_instance_in_step(
        self, changes: dict[str, Any], state_row: dict[str, Any] | None = None
    ) -> None:
        """Mark what was just written as committed on the session's ORM instance of the run (the
        run itself, or the one the session holds beside a `LockedRun`, e.g. a run created in
        this transaction), as if the session had loaded it so: it is current, and a flush has
        nothing to write again. A new state becomes a persistent row the run points at."""
        instance = self.run if isinstance(self.run, orm.Base) else self._held_instance()
        if instance is None:
            return
        for key, value in changes.items():
            set_committed_value(instance, key, value)
        if state_row is not None:
            state = self.TABLES.state_class()
            sa.inspect(state).dict.update(state_row)  # as a load fills it: no attribute events
            make_transient_to_detached(state)
            self.session.add(state)
            set_committed_value(instance, "state", state)

    def _held_instance(self) -> Any:
        return held_instance(self.session, self.TABLES.run_class, self.run.id)

    def _state_values(self, state: State) -> dict[str, Any]:
        """The columns of the state row to write for `state` (raises if it cannot be stored)."""
        now = now_utc()
        return {
            "id": state.id,
            "created": now,
            "updated": now,
            "type": state.type,
            "timestamp": state.timestamp,
            "name": state.name,
            "message": state.message,
            "state_details": deep_copy(state.state_details),
            "data": _stored_data(state.data),
            self.TABLES.state_run_key: self.run.id,
        }


ARTIFACT_FIELDS = ("artifact_key", "artifact_type", "artifact_description")
"""Keys of result data that Prefect moves to an artifact: flowruns has none, so they are dropped."""


def result_data(data: Any) -> Any:
    """State data as a run keeps it: without the artifact fields (the caller's object is untouched)."""
    if isinstance(data, dict) and any(field in data for field in ARTIFACT_FIELDS):
        return {key: value for key, value in data.items() if key not in ARTIFACT_FIELDS}
    return data


def _stored_data(data: Any) -> Any:
    """The JSON to store inline: unpersisted result markers are not stored, as Prefect."""
    if isinstance(data, dict) and data.get("type") == UNPERSISTED:
        return None
    return to_jsonable_python(result_data(data))


@dataclasses.dataclass(eq=False)
class FlowOrchestrationContext(OrchestrationContext[orm.FlowRun]):
    TABLES = FLOW_RUNS

    def _state_values(self, state: State) -> dict[str, Any]:
        values = super()._state_values(state)
        values["transition_id"] = values["state_details"].transition_id
        return values

    def has_made_transition(self, transition_id: uuid.UUID) -> bool:
        """Whether any state in the run's history carries this transition id: as read with the
        lock, or by an indexed lookup."""
        known = self.lookups.get("transitions_made", {}).get(transition_id)
        if known is not None:
            return bool(known)
        statement = _transition_made_statement()
        found = self.session.execute(statement, {"run_id": self.run.id, "transition_id": transition_id})
        return found.first() is not None

    def deployment_slot(self) -> DeploymentSlot:
        """The run's deployment with its limit, and the run's holding of that limit.

        Read with the lock, or by one query at most once per transition (the answer is cached
        on the context).
        """
        cached = self.lookups.get("deployment_slot")
        if cached is None:
            cached = self.lookups["deployment_slot"] = self._load_deployment_slot()
        return cached

    def remember_holding(self, holding_id: uuid.UUID | None) -> None:
        """Keep the cached answer true after a rule acquired or released the run's slot."""
        current = self.deployment_slot()
        self.lookups["deployment_slot"] = dataclasses.replace(current, holding_id=holding_id)

    def holds_no_slot(self) -> bool:
        """Known (from the lock) to hold no slot of any limit: nothing to release."""
        slot = self.lookups.get("deployment_slot")
        return slot is not None and slot.holdings == 0 and slot.holding_id is None

    def _load_deployment_slot(self) -> DeploymentSlot:
        if self.run.deployment_id is None:
            return DeploymentSlot()
        row = self.session.execute(
            _deployment_slot_statement(), {"deployment_id": self.run.deployment_id, "run_id": self.run.id}
        ).first()
        if row is None:
            return DeploymentSlot()
        limit_id, value, active_slots, options, holding_id = row
        return DeploymentSlot(
            found=True,
            limit_id=limit_id,
            limit=value or 0,
            active_slots=active_slots or 0,
            concurrency_options=options,
            holding_id=holding_id,
        )


@functools.cache
def _transition_made_statement() -> sa.Select[Any]:
    state = orm.FlowRunState.__table__
    return (
        sa.select(state.c.id)
        .where(
            state.c.flow_run_id == sa.bindparam("run_id"),
            state.c.transition_id == sa.bindparam("transition_id"),
        )
        .limit(1)
    )


@functools.cache
def _deployment_slot_statement() -> sa.Select[Any]:
    deployment = orm.Deployment.__table__
    limit = orm.ConcurrencyLimit.__table__
    holding = orm.SlotHolding.__table__
    return (
        sa.select(
            limit.c.id, limit.c.limit, limit.c.active_slots, deployment.c.concurrency_options, holding.c.id
        )
        .select_from(deployment)
        .outerjoin(limit, limit.c.id == deployment.c.concurrency_limit_id)
        .outerjoin(
            holding,
            sa.and_(
                holding.c.concurrency_limit_id == limit.c.id, holding.c.flow_run_id == sa.bindparam("run_id")
            ),
        )
        .where(deployment.c.id == sa.bindparam("deployment_id"))
    )


@dataclasses.dataclass(eq=False)
class TaskOrchestrationContext(OrchestrationContext[orm.TaskRun]):
    TABLES = TASK_RUNS

    def flow_run(self) -> EnclosingFlowRun | None:
        """The flow run this task run belongs to, with its current state: None for a task run
        without one, or when it is gone. Read at most once per transition (every rule that asks
        within one transition sees the same answer, as they would within one transaction)."""
        if self.run.flow_run_id is None:
            return None
        if "flow_run" not in self.lookups:
            self.lookups["flow_run"] = read_enclosing_flow_run(self.session, self.run.flow_run_id)
        found: EnclosingFlowRun | None = self.lookups["flow_run"]
        return found


def next_timestamp(after: datetime.datetime | None, proposed: datetime.datetime) -> datetime.datetime:
    """`proposed`, moved just past `after` if it is not later: history stays strictly ordered."""
    if after is not None and proposed <= after:
        return after + datetime.timedelta(microseconds=1)
    return proposed


def proposed_state_from(state: Any) -> State:
    """The caller's proposal (`State`, `StateCreate` or a dict of either) as a new `State`; the
    caller's object is not modified and a `State` keeps its id. Stamp it once the run is locked."""
    from models.schemas.actions import StateCreate

    try:
        if isinstance(state, dict):
            state = (State if {"id", "timestamp"} & state.keys() else StateCreate).model_validate(state)
        if isinstance(state, State):
            return deep_copy(state)
        if isinstance(state, StateCreate):
            return State.model_validate(state.model_dump())
    except pydantic.ValidationError as error:
        raise ValidationError(f"state: {_describe(error)}") from None
    raise ValidationError(f"state: expected a State, StateCreate or dict, got {type(state).__name__}")


def _describe(error: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'state'}: {item['msg']}" for item in error.errors()
    )
