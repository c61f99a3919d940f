"""A run as one transition sees it: typed snapshots read without a lock, and what a transition writes.

The transition service (`orchestration.service`) reads a snapshot, lets the rules decide on it,
and hands `models.transition_sql` a `TransitionWrite` that applies the outcome only if the run is
still in the state the snapshot saw. Rules change a snapshot's bookkeeping fields (the columns a
transition may write); what differs from the values read is what gets written.
"""

import dataclasses
import datetime
import uuid
from typing import Any, ClassVar

from models.schemas.core import ConcurrencyLimitStrategy, ConcurrencyOptions, FlowRunPolicy, TaskRunPolicy
from models.schemas.states import StateDetails, StateType

BOOKKEEPING_COLUMNS = (
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
"""Run columns a transition may change (the bookkeeping the rules and global transforms keep)."""


@dataclasses.dataclass(frozen=True)
class StateRecord:
    """A stored state as read with its run."""

    id: uuid.UUID
    type: StateType
    name: str
    timestamp: datetime.datetime
    message: str | None
    state_details: StateDetails
    data: Any

    FIELDS: ClassVar[tuple[str, ...]] = ("id", "type", "name", "timestamp", "message", "state_details", "data")


@dataclasses.dataclass(frozen=True)
class DeploymentSlot:
    """What the slot rules know of a run's deployment: whether it exists, its limit (None: no
    limit), collision options, the run's holding of that limit, and how many holdings the run has."""

    found: bool = False
    limit_id: uuid.UUID | None = None
    limit: int = 0
    active: bool = True
    """An inactive limit behaves as full."""
    active_slots: int = 0
    concurrency_options: ConcurrencyOptions | None = None
    holding_id: uuid.UUID | None = None
    holdings: int = 0

    @property
    def collision_strategy(self) -> ConcurrencyLimitStrategy:
        options = self.concurrency_options
        return options.collision_strategy if options is not None else ConcurrencyLimitStrategy.ENQUEUE

    @property
    def has_free_slot(self) -> bool:
        return self.active and self.active_slots < self.limit


@dataclasses.dataclass(frozen=True)
class EnclosingFlowRun:
    """The flow run a task run belongs to, as its task rules need it."""

    id: uuid.UUID
    run_count: int
    state_type: StateType | None
    state_details: StateDetails | None


@dataclasses.dataclass(kw_only=True)
class RunSnapshot:
    """A run's bookkeeping as read, and its current state. The rules may change the bookkeeping."""

    id: uuid.UUID
    state_id: uuid.UUID | None
    state_type: StateType | None
    state_name: str | None
    state_timestamp: datetime.datetime | None
    run_count: int
    expected_start_time: datetime.datetime | None
    next_scheduled_start_time: datetime.datetime | None
    start_time: datetime.datetime | None
    end_time: datetime.datetime | None
    total_run_time: datetime.timedelta
    state: StateRecord | None
    new_row: dict[str, Any] | None = None
    """A run this transaction creates and has not written yet: every column's value. Its INSERT
    goes with its first state (or alone, when the proposal writes nothing)."""

    WRITTEN: ClassVar[tuple[str, ...]] = BOOKKEEPING_COLUMNS

    def written_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.WRITTEN}


@dataclasses.dataclass(kw_only=True)
class FlowRunSnapshot(RunSnapshot):
    deployment_id: uuid.UUID | None
    parent_task_run_id: uuid.UUID | None
    infrastructure_pid: str | None
    updated: datetime.datetime | None
    """When the run's row was last written: the write compares it, so that an update between the
    read and the write (not only a transition) sends the transition round again. None for a run
    this transaction creates (no one else can update it)."""
    empirical_policy: FlowRunPolicy
    deployment_slot: DeploymentSlot
    transition_made: bool
    """Whether a state of the run's history carries the proposal's transition id."""


@dataclasses.dataclass(kw_only=True)
class TaskRunSnapshot(RunSnapshot):
    flow_run_id: uuid.UUID | None
    flow_run_run_count: int
    empirical_policy: TaskRunPolicy
    flow_run: EnclosingFlowRun | None
    cached_state: StateRecord | None
    """The newest unexpired cached state for the proposal's cache key, if it asked for one."""

    WRITTEN: ClassVar[tuple[str, ...]] = (*BOOKKEEPING_COLUMNS, "flow_run_run_count")


@dataclasses.dataclass(frozen=True)
class SlotChange:
    """Take a slot of `limit_id` (recorded as holding `holding_id`), or give back every slot the run
    holds (`release`)."""

    acquire_limit_id: uuid.UUID | None = None
    holding_id: uuid.UUID | None = None
    release: bool = False


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """A COMPLETED task-run state to remember under its cache key."""

    cache_key: str
    cache_expiration: datetime.datetime | None
    task_run_state_id: uuid.UUID


@dataclasses.dataclass(frozen=True)
class InboxRecord:
    """A request's task id and outcome, recorded with its effect (the exactly-once inbox)."""

    task_id: str
    name: str
    outcome: Any


@dataclasses.dataclass(frozen=True)
class TransitionWrite:
    """Everything one transition writes, applied only if the run still points at `seen_state_id`
    (and still has `seen_updated`, when given)."""

    run_id: uuid.UUID
    seen_state_id: uuid.UUID | None
    state: dict[str, Any] | None
    """The new state's columns (None: the transition writes no state)."""
    run_changes: dict[str, Any]
    """The run columns that change (`updated` included when any does)."""
    new_run: dict[str, Any] | None = None
    slots: SlotChange = SlotChange()
    cache_entry: CacheEntry | None = None
    inbox: InboxRecord | None = None
    seen_updated: datetime.datetime | None = None
    """The run's `updated` as read, compared too when given (a flow run's)."""

    @property
    def writes_anything(self) -> bool:
        return bool(
            self.state or self.run_changes or self.new_run or self.slots != SlotChange()
            or self.cache_entry or self.inbox
        )


@dataclasses.dataclass(frozen=True)
class WriteResult:
    applied: bool
    """False: the run had moved on since it was read (or a slot or the inbox was taken): nothing
    was written, the transition must be read and decided again."""
    slots_released: int = 0
