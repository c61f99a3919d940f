"""The orchestration context: one proposed transition of one run, and what the rules decided.

The run reaches the rules as a typed snapshot (`models.run_snapshots`), read without a lock; rules
change its bookkeeping and record, on the context's `effects`, what the transition writes besides
the state: a slot to take or give back, a cache entry, transitions of other runs to make with it.
Neither rules nor context touch the database: the transition service (`orchestration.service`)
turns the decided context into one write that applies only if the run has not moved on.
"""

import dataclasses
import datetime
import uuid
from typing import Any, ClassVar, Generic, Self, TypeVar

import pydantic
from pydantic_core import to_jsonable_python

from models.errors import ValidationError
from models.run_snapshots import (
    CacheEntry,
    DeploymentSlot,
    EnclosingFlowRun,
    FlowRunSnapshot,
    RunSnapshot,
    StateRecord,
    TaskRunSnapshot,
)
from models.schemas.base import deep_copy
from models.schemas.responses import (
    SetStateStatus,
    StateAbortDetails,
    StateAcceptDetails,
    StateRejectDetails,
    StateWaitDetails,
)
from models.schemas.states import State, StateType
from models.types import now_utc

StateResponseDetails = StateAcceptDetails | StateRejectDetails | StateAbortDetails | StateWaitDetails
SnapshotT = TypeVar("SnapshotT", bound=RunSnapshot)

UNPERSISTED = "unpersisted"

ARTIFACT_FIELDS = ("artifact_key", "artifact_type", "artifact_description")
"""Keys of result data that Prefect moves to an artifact: flowruns has none, so they are dropped."""

__all__ = ["DeploymentSlot", "Effects", "FlowOrchestrationContext", "TaskOrchestrationContext"]


def has_persisted_result(data: Any) -> bool:
    """Whether state data is persisted result metadata (a dict not marked unpersisted)."""
    return isinstance(data, dict) and data.get("type") != UNPERSISTED


def version_tuple(version: Any) -> tuple[int, ...]:
    """`"0.8.4"` (or a `packaging` Version) as `(0, 8, 4)`; non-numeric parts count as 0."""
    parts = str(version).split("+")[0].split(".")
    return tuple(int("".join(ch for ch in part if ch.isdigit()) or 0) for part in parts)


def update_run_policy(run: FlowRunSnapshot | TaskRunSnapshot, **changes: Any) -> None:
    """Give the run a new `empirical_policy` with these fields changed (the snapshot keeps the one
    it read, so the difference is what gets written)."""
    run.empirical_policy = deep_copy(run.empirical_policy.model_copy(update=changes))


def state_from_row(row: StateRecord | Any) -> State:
    """The `State` schema of a stored state (a `StateRecord` or an ORM row), with its inline data."""
    return State(
        id=row.id,
        type=row.type,
        name=row.name,
        timestamp=row.timestamp,
        message=row.message,
        data=row.data,
        state_details=deep_copy(row.state_details),
    )


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


@dataclasses.dataclass(frozen=True)
class FollowOn:
    """A transition of another run, made in the same transaction after this one is written:
    `task_run_id` is proposed `state` with force."""

    task_run_id: uuid.UUID
    state: State


@dataclasses.dataclass
class Effects:
    """What the rules decided the transition writes besides the state. Shared by every safe copy
    of the context, so a rule records on it whatever copy it was handed."""

    acquire_limit_id: uuid.UUID | None = None
    holding_id: uuid.UUID | None = None
    """The holding (lease) id a slot acquisition records; stamped on the proposal."""
    release_slots: bool = False
    cache_entry: CacheEntry | None = None
    follow_ons: list[FollowOn] = dataclasses.field(default_factory=list)
    reschedule_failed_task_runs_at: datetime.datetime | None = None
    """Old clients (api < 0.8.3): the flow run's failed task runs go to AwaitingRetry at this time."""


@dataclasses.dataclass(eq=False)
class OrchestrationContext(Generic[SnapshotT]):
    """A transition being governed. Rules change it only through their verbs and `effects`."""

    run: SnapshotT
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
    effects: Effects = dataclasses.field(default_factory=Effects)
    written_state: dict[str, Any] | None = None
    """The columns of the state the transition writes (set when the proposal is validated)."""

    STATE_RUN_KEY: ClassVar[str]

    @property
    def initial_state_type(self) -> StateType | None:
        return self.initial_state.type if self.initial_state else None

    @property
    def proposed_state_type(self) -> StateType | None:
        return self.proposed_state.type if self.proposed_state else None

    @property
    def validated_state_type(self) -> StateType | None:
        return self.validated_state.type if self.validated_state else None


    def api_version_at_least(self, version: str) -> bool:
        """True when the caller's api-version is unknown (current clients) or >= `version`."""
        api_version = self.parameters.get("api-version")
        return api_version is None or version_tuple(api_version) >= version_tuple(version)

    def safe_copy(self) -> Self:
        """A copy for rule hooks: replacing its fields changes nothing, but the states' details
        and the effects are shared, so editing `proposed_state.state_details` edits the real
        proposal and recording an effect records it."""
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
        """Settle the state the transition writes (nothing is written here): the proposal, or
        with no proposal the current state. A proposal that cannot be stored aborts."""
        if self.proposed_state is None:
            self.validated_state = self.initial_state.model_copy() if self.initial_state else None
            return
        try:
            row = self._state_values(self.proposed_state)
        except Exception as error:  # an unstorable proposal: nothing is written
            self.proposed_state = None
            self.response_status = SetStateStatus.ABORT
            self.response_details = StateAbortDetails(reason=f"Error validating state: {error!r}")
            self.validate_proposed_state()
            return
        self.run.state_id = row["id"]
        self.written_state = row
        validated = state_from_row(StateRecord(**{name: row[name] for name in StateRecord.FIELDS}))
        validated.data = result_data(self.proposed_state.data)
        self.validated_state = validated

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
            self.STATE_RUN_KEY: self.run.id,
        }


@dataclasses.dataclass(eq=False)
class FlowOrchestrationContext(OrchestrationContext[FlowRunSnapshot]):
    STATE_RUN_KEY = "flow_run_id"

    def _state_values(self, state: State) -> dict[str, Any]:
        values = super()._state_values(state)
        values["transition_id"] = values["state_details"].transition_id
        return values

    def has_made_transition(self, transition_id: uuid.UUID) -> bool:
        """Whether a state of the run's history carries this transition id (the proposal's own,
        read with the run)."""
        proposed = self.proposed_state
        asked = proposed.state_details.transition_id if proposed is not None else None
        return transition_id == asked and self.run.transition_made

    def deployment_slot(self) -> DeploymentSlot:
        """The run's deployment with its limit and the run's holding of it, as read, with the
        holding a rule decided to take (its lease id) counted."""
        slot = self.run.deployment_slot
        if slot.holding_id is None and self.effects.acquire_limit_id is not None:
            return dataclasses.replace(slot, holding_id=self.effects.holding_id)
        return slot

    def holds_no_slot(self) -> bool:
        """The run holds no slot of any limit (as read, and none decided): nothing to release."""
        return self.run.deployment_slot.holdings == 0 and self.effects.acquire_limit_id is None


@dataclasses.dataclass(eq=False)
class TaskOrchestrationContext(OrchestrationContext[TaskRunSnapshot]):
    STATE_RUN_KEY = "task_run_id"

    def flow_run(self) -> EnclosingFlowRun | None:
        """The flow run this task run belongs to, as read with it: None for a task run without
        one, or when it is gone."""
        return self.run.flow_run


def next_timestamp(after: datetime.datetime | None, proposed: datetime.datetime) -> datetime.datetime:
    """`proposed`, moved just past `after` if it is not later: history stays strictly ordered."""
    if after is not None and proposed <= after:
        return after + datetime.timedelta(microseconds=1)
    return proposed


def proposed_state_from(state: Any) -> State:
    """The caller's proposal (`State`, `StateCreate` or a dict of either) as a new `State`; the
    caller's object is not modified and a `State` keeps its id. Stamped by the service."""
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
