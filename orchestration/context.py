"""The orchestration context: one proposed transition of one run, and what the rules decided.

All side effects share the caller's session (one transaction). The run is the ORM row, locked
by the caller; the three states are `State` schemas. Rules read what the caller's SELECT loaded;
the deployment (with its limit and the run's holding of it) is loaded at most once, on demand.
"""

import copy
import dataclasses
import datetime
import logging
import uuid
from typing import Any, Generic, Self, TypeVar

import pydantic
import sqlalchemy as sa
from pydantic_core import to_jsonable_python
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from models import orm
from models.errors import ObjectNotFoundError, ValidationError
from models.schemas.core import ConcurrencyLimitStrategy, ConcurrencyOptions
from models.schemas.responses import (
    SetStateStatus,
    StateAbortDetails,
    StateAcceptDetails,
    StateRejectDetails,
    StateWaitDetails,
)
from models.schemas.states import State, StateType

logger = logging.getLogger(__name__)

StateResponseDetails = StateAcceptDetails | StateRejectDetails | StateAbortDetails | StateWaitDetails
RunT = TypeVar("RunT", orm.FlowRun, orm.TaskRun)

UNPERSISTED = "unpersisted"


def has_persisted_result(data: Any) -> bool:
    """Whether state data is persisted result metadata (a dict not marked unpersisted)."""
    return isinstance(data, dict) and data.get("type") != UNPERSISTED


def version_tuple(version: Any) -> tuple[int, ...]:
    """`"0.8.4"` (or a `packaging` Version) as `(0, 8, 4)`; non-numeric parts count as 0."""
    parts = str(version).split("+")[0].split(".")
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in parts)


def update_run_policy(run: orm.FlowRun, **changes: Any) -> None:
    """Assign the run a new `empirical_policy` with these fields changed (a JSON column is only
    saved when a new object is assigned)."""
    run.empirical_policy = run.empirical_policy.model_copy(update=changes, deep=True)


def locked_current_state(session: Session, run: orm.FlowRun | orm.TaskRun) -> State | None:
    """The current state of a run just read with `FOR UPDATE`, as a `State`.

    On PostgreSQL a `SELECT ... FOR UPDATE` that waited for another transition returns the run
    row as that transition committed it, but the rows joined to it as they were before (here:
    no state, or the previous one). The run's `state_id` is then the truth: the state is read
    again by id. Costs a query only when the lock was contended.
    """
    row = run.state
    if run.state_id is not None and (row is None or row.id != run.state_id):
        state_type = orm.FlowRunState if isinstance(run, orm.FlowRun) else orm.TaskRunState
        row = session.get(state_type, run.state_id, populate_existing=True)
        set_committed_value(run, "state", row)
    return state_from_row(row) if row is not None else None


def state_from_row(row: orm.FlowRunState | orm.TaskRunState) -> State:
    """The `State` schema of a stored state, with its inline data."""
    return State(
        id=row.id,
        type=row.type,
        name=row.name,
        timestamp=row.timestamp,
        message=row.message,
        data=row.data,
        state_details=row.state_details.model_copy(deep=True),
    )


@dataclasses.dataclass(frozen=True)
class DeploymentSlot:
    """What the slot rules need to know about the run's deployment: whether it exists, its
    limit (None: no limit) and collision options, and the run's holding of that limit."""

    found: bool = False
    limit_id: uuid.UUID | None = None
    limit: int = 0
    active_slots: int = 0
    concurrency_options: ConcurrencyOptions | None = None
    holding_id: uuid.UUID | None = None

    @property
    def collision_strategy(self) -> ConcurrencyLimitStrategy:
        options = self.concurrency_options
        return options.collision_strategy if options is not None else ConcurrencyLimitStrategy.ENQUEUE


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
    # Loaded on demand and shared by every safe copy of this context.
    lookups: dict[str, Any] = dataclasses.field(default_factory=dict)

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
        clone = copy.copy(self)
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
        """Write the proposed state (or keep the current one when there is none).

        A proposal that cannot be stored aborts the transition; database errors propagate so
        the caller's transaction rolls back (and the request may be retried).
        """
        if self.proposed_state is None:
            current = self.run.state
            self.validated_state = state_from_row(current) if current is not None else None
            return
        try:
            row, data = self._state_row(self.proposed_state)
        except Exception as error:  # an unstorable proposal: nothing is written
            logger.exception("could not store the proposed state")
            self.proposed_state = None
            self.response_status = SetStateStatus.ABORT
            self.response_details = StateAbortDetails(reason=f"Error validating state: {error!r}")
            self.validate_proposed_state()
            return
        self.session.add(row)
        self.run.set_state(row)  # type: ignore[arg-type]
        self.session.flush()  # database errors propagate: the caller's transaction rolls back
        validated = state_from_row(row)
        validated.data = data
        self.validated_state = validated

    def _state_row(self, state: State) -> tuple[orm.FlowRunState | orm.TaskRunState, Any]:
        raise NotImplementedError


def _stored_data(data: Any) -> Any:
    """The JSON to store inline: unpersisted result markers are not stored, as Prefect."""
    if isinstance(data, dict) and data.get("type") == UNPERSISTED:
        return None
    return to_jsonable_python(data)


@dataclasses.dataclass(eq=False)
class FlowOrchestrationContext(OrchestrationContext[orm.FlowRun]):
    def _state_row(self, state: State) -> tuple[orm.FlowRunState, Any]:
        details = state.state_details.model_copy(deep=True)
        row = orm.FlowRunState(
            id=state.id,
            flow_run_id=self.run.id,
            type=state.type,
            name=state.name,
            timestamp=state.timestamp,
            message=state.message,
            state_details=details,
            data=_stored_data(state.data),
            transition_id=details.transition_id,
        )
        return row, state.data

    def has_made_transition(self, transition_id: uuid.UUID) -> bool:
        """Whether any state in the run's history carries this transition id (indexed lookup)."""
        state = orm.FlowRunState
        statement = sa.select(state.id).where(
            state.flow_run_id == self.run.id, state.transition_id == transition_id
        )
        return self.session.execute(statement.limit(1)).first() is not None

    def deployment_slot(self) -> DeploymentSlot:
        """The run's deployment with its limit, and the run's holding of that limit.

        One query, run at most once per transition (the answer is cached on the context).
        """
        cached = self.lookups.get("deployment_slot")
        if cached is None:
            cached = self.lookups["deployment_slot"] = self._load_deployment_slot()
        return cached

    def remember_holding(self, holding_id: uuid.UUID | None) -> None:
        """Keep the cached answer true after a rule acquired or released the run's slot."""
        current = self.deployment_slot()
        self.lookups["deployment_slot"] = dataclasses.replace(current, holding_id=holding_id)

    def _load_deployment_slot(self) -> DeploymentSlot:
        if self.run.deployment_id is None:
            return DeploymentSlot()
        deployment, limit, holding = orm.Deployment, orm.ConcurrencyLimit, orm.SlotHolding
        row = self.session.execute(
            sa.select(limit.id, limit.limit, limit.active_slots, deployment.concurrency_options, holding.id)
            .select_from(deployment)
            .outerjoin(limit, limit.id == deployment.concurrency_limit_id)
            .outerjoin(
                holding, sa.and_(holding.concurrency_limit_id == limit.id, holding.flow_run_id == self.run.id)
            )
            .where(deployment.id == self.run.deployment_id)
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


@dataclasses.dataclass(eq=False)
class TaskOrchestrationContext(OrchestrationContext[orm.TaskRun]):
    def _state_row(self, state: State) -> tuple[orm.TaskRunState, Any]:
        row = orm.TaskRunState(
            id=state.id,
            task_run_id=self.run.id,
            type=state.type,
            name=state.name,
            timestamp=state.timestamp,
            message=state.message,
            state_details=state.state_details.model_copy(deep=True),
            data=_stored_data(state.data),
        )
        return row, state.data

    def flow_run_run_count(self) -> int | None:
        """The parent flow run's run count (None for a task run without a flow run)."""
        if self.run.flow_run_id is None:
            return None
        count = self.session.execute(
            sa.select(orm.FlowRun.run_count).where(orm.FlowRun.id == self.run.flow_run_id)
        ).scalar_one_or_none()
        if count is None:
            raise ObjectNotFoundError(
                f"flow_run_id: the flow run {self.run.flow_run_id} of task run {self.run.id} is gone"
            )
        return count


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
            return state.model_copy(deep=True)
        if isinstance(state, StateCreate):
            return State.model_validate(state.model_dump())
    except pydantic.ValidationError as error:
        raise ValidationError(f"state: {_describe(error)}") from None
    raise ValidationError(f"state: expected a State, StateCreate or dict, got {type(state).__name__}")


def _describe(error: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'state'}: {item['msg']}" for item in error.errors()
    )
