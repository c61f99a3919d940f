"""State types, state details and the State schema with its named constructors."""

import datetime
import enum
from typing import Any, Self
from uuid import UUID

from pydantic import ConfigDict, Field, model_validator

from models.schemas.base import DateTime, FlowrunsModel, TimeSeriesModel
from models.types import now_utc, uuid7


class StateType(str, enum.Enum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CRASHED = "CRASHED"
    PAUSED = "PAUSED"
    CANCELLING = "CANCELLING"

    def __str__(self) -> str:
        return self.value


TERMINAL_STATES = frozenset(
    {StateType.COMPLETED, StateType.CANCELLED, StateType.FAILED, StateType.CRASHED}
)
ACTIVE_STATES = frozenset({StateType.PENDING, StateType.RUNNING, StateType.CANCELLING})
"""States of a run that has been submitted and not yet finished."""

AWAITING_RETRY = "AwaitingRetry"
"""The SCHEDULED state of a run whose process will retry it in place."""


def keeps_deployment_slot(state_type: StateType | None, name: str | None, pause_reschedule: bool) -> bool:
    """Whether a run in this state keeps the deployment slot it secured: its process may still be
    alive. That is PENDING, RUNNING and CANCELLING, a blocking pause (the process waits to resume;
    a `Suspended` pause, with reschedule, ends it) and AwaitingRetry (the process retries in place).
    Every other state gives the slot back."""
    if state_type in ACTIVE_STATES:
        return True
    if state_type == StateType.PAUSED:
        return not pause_reschedule
    return state_type == StateType.SCHEDULED and name == AWAITING_RETRY


class StateDetails(FlowrunsModel):
    flow_run_id: UUID | None = None
    task_run_id: UUID | None = None
    child_flow_run_id: UUID | None = None
    scheduled_time: DateTime | None = None
    cache_key: str | None = None
    cache_expiration: DateTime | None = None
    deferred: bool | None = False
    untrackable_result: bool = False
    pause_timeout: DateTime | None = None
    pause_reschedule: bool = False
    pause_key: str | None = None
    run_input_keyset: dict[str, str] | None = None
    refresh_cache: bool | None = None
    retriable: bool | None = None
    transition_id: UUID | None = None
    task_parameters_id: UUID | None = None
    traceparent: str | None = None
    deployment_concurrency_lease_id: UUID | None = None


def default_state_name(state_type: StateType) -> str:
    return " ".join(word.capitalize() for word in state_type.value.split("_"))


class StateDefaults:
    """Validators shared by `State` and `StateCreate`: a name from the type, a scheduled time."""

    type: StateType
    name: str | None
    state_details: StateDetails

    @model_validator(mode="after")
    def _apply_state_defaults(self) -> Self:
        if self.name is None:
            self.name = default_state_name(self.type)
        if self.type == StateType.SCHEDULED and not self.state_details.scheduled_time:
            self.state_details.scheduled_time = now_utc()
        return self


class State(StateDefaults, TimeSeriesModel):
    """The state of a run at one instant."""

    model_config = ConfigDict(from_attributes=True, ser_json_timedelta="float", extra="ignore")

    type: StateType
    name: str | None = None
    timestamp: DateTime = Field(default_factory=now_utc)
    message: str | None = None
    data: Any | None = None
    state_details: StateDetails = Field(default_factory=StateDetails)

    def is_scheduled(self) -> bool:
        return self.type == StateType.SCHEDULED

    def is_pending(self) -> bool:
        return self.type == StateType.PENDING

    def is_running(self) -> bool:
        return self.type == StateType.RUNNING

    def is_completed(self) -> bool:
        return self.type == StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type == StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type == StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type == StateType.CANCELLED

    def is_cancelling(self) -> bool:
        return self.type == StateType.CANCELLING

    def is_paused(self) -> bool:
        return self.type == StateType.PAUSED

    def is_final(self) -> bool:
        return self.type in TERMINAL_STATES

    def keeps_deployment_slot(self) -> bool:
        """See `keeps_deployment_slot`: whether the run's process may still be alive in this state."""
        return keeps_deployment_slot(self.type, self.name, self.state_details.pause_reschedule)

    def fresh_copy(self, **update: Any) -> Self:
        """A deep copy with a new id and the current time."""
        return self.model_copy(
            update={"id": uuid7(), "timestamp": now_utc(), **update}, deep=True
        )

    def to_state_create(self) -> Any:
        from models.schemas.actions import StateCreate

        return StateCreate(
            type=self.type,
            name=self.name,
            message=self.message,
            data=self.data,
            state_details=self.state_details,
        )

    def __str__(self) -> str:
        shown = [repr(self.message)] if self.message else []
        if self.type.value.lower() != (self.name or "").lower():
            shown.append(f"type={self.type.value}")
        return f"{self.name}({', '.join(shown)})"


def _details(kwargs: dict[str, Any]) -> StateDetails:
    return StateDetails.model_validate(kwargs.pop("state_details", {}))


def Scheduled(scheduled_time: datetime.datetime | None = None, cls: type[State] = State, **kwargs: Any) -> State:
    details = _details(kwargs)
    if scheduled_time is not None and details.scheduled_time:
        raise ValueError("An extra scheduled_time was provided in state_details")
    details.scheduled_time = scheduled_time or details.scheduled_time or now_utc()
    return cls(type=StateType.SCHEDULED, state_details=details, **kwargs)


def Completed(cls: type[State] = State, **kwargs: Any) -> State:
    return cls(type=StateType.COMPLETED, **kwargs)


def Running(cls: type[State] = State, **kwargs: Any) -> State:
    return cls(type=StateType.RUNNING, **kwargs)


def Failed(cls: type[State] = State, **kwargs: Any) -> State:
    return cls(type=StateType.FAILED, **kwargs)


def Crashed(cls: type[State] = State, **kwargs: Any) -> State:
    return cls(type=StateType.CRASHED, **kwargs)


def Cancelling(cls: type[State] = State, **kwargs: Any) -> State:
    return cls(type=StateType.CANCELLING, **kwargs)


def Cancelled(cls: type[State] = State, **kwargs: Any) -> State:
    return cls(type=StateType.CANCELLED, **kwargs)


def Pending(cls: type[State] = State, **kwargs: Any) -> State:
    return cls(type=StateType.PENDING, **kwargs)


def Paused(
    cls: type[State] = State,
    timeout_seconds: int | None = None,
    pause_expiration_time: datetime.datetime | None = None,
    reschedule: bool = False,
    pause_key: str | None = None,
    **kwargs: Any,
) -> State:
    details = _details(kwargs)
    if details.pause_timeout:
        raise ValueError("An extra pause timeout was provided in state_details")
    if pause_expiration_time is not None and timeout_seconds is not None:
        raise ValueError("Cannot supply both a pause_expiration_time and timeout_seconds")
    if pause_expiration_time is not None:
        details.pause_timeout = pause_expiration_time
    elif timeout_seconds is not None:
        details.pause_timeout = now_utc() + datetime.timedelta(seconds=timeout_seconds)
    details.pause_reschedule = reschedule
    details.pause_key = pause_key
    return cls(type=StateType.PAUSED, state_details=details, **kwargs)


def Suspended(
    cls: type[State] = State,
    timeout_seconds: int | None = None,
    pause_expiration_time: datetime.datetime | None = None,
    pause_key: str | None = None,
    **kwargs: Any,
) -> State:
    return Paused(
        cls=cls,
        name="Suspended",
        reschedule=True,
        timeout_seconds=timeout_seconds,
        pause_expiration_time=pause_expiration_time,
        pause_key=pause_key,
        **kwargs,
    )


def AwaitingRetry(scheduled_time: datetime.datetime | None = None, cls: type[State] = State, **kwargs: Any) -> State:
    return Scheduled(scheduled_time=scheduled_time, cls=cls, name=AWAITING_RETRY, **kwargs)


def AwaitingConcurrencySlot(
    scheduled_time: datetime.datetime | None = None, cls: type[State] = State, **kwargs: Any
) -> State:
    return Scheduled(scheduled_time=scheduled_time, cls=cls, name="AwaitingConcurrencySlot", **kwargs)


def Late(scheduled_time: datetime.datetime | None = None, cls: type[State] = State, **kwargs: Any) -> State:
    return Scheduled(scheduled_time=scheduled_time, cls=cls, name="Late", **kwargs)


def Submitting(cls: type[State] = State, **kwargs: Any) -> State:
    return Pending(cls=cls, name="Submitting", **kwargs)


def InfrastructurePending(cls: type[State] = State, **kwargs: Any) -> State:
    return Pending(cls=cls, name="InfrastructurePending", **kwargs)


def Retrying(cls: type[State] = State, **kwargs: Any) -> State:
    return cls(type=StateType.RUNNING, name="Retrying", **kwargs)
