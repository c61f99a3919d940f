"""The transition service: one module owns a transition, from the read to the write, for flow
runs and task runs alike.

    read    the run's snapshot, without a lock, and the request's inbox record (one statement)
    decide  the policy's rules and the global transforms, on the snapshot (no database)
    write   one statement that applies the outcome only if the run still points at the state it
            was read with: the state, the run's bookkeeping, the slot taken or given back, the
            cache entry and the inbox row together (`models.transition_sql`)
    again   when the run moved on (or the slot or the inbox row was taken) meanwhile: read and
            decide again after a short random pause, at most `MAX_ATTEMPTS` times; every such
            conflict is counted. After `LOCKED_AFTER` conflicts, each attempt takes the run's row
            lock first and holds it until its write commits, so a transition cannot keep losing
            to others changing the same run

Transitions of other runs the rules ask for (a subflow's parent task run mirrors its state; old
clients' failed task runs are rescheduled) are made in the same transaction, right after the
write. A recorded request (the inbox) answers with its recorded outcome without deciding again.

The worker's create of a run (with its first state, and no idempotency key or work-pool or queue
names) is the same shape with nothing to compare: one read of the run's flow and deployment with
the request's inbox record, then one statement inserting the run, its state and the inbox row.

`models.flow_runs.set_flow_run_state` and `models.task_runs.set_task_run_state` reach this module
through the `flowruns.transitions` entry point (`models.transitions`).
"""

import dataclasses
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from models import orm
from models.concurrency_slots import note_released
from models.database import commits_each_statement, dialect_name, explicit_transaction
from models.errors import ObjectNotFoundError, ValidationError
from models.flow_run_inserts import (
    ParentIds,
    new_run_row,
    read_parents_and_inbox,
    unattached_flow_run,
)
from models.flow_runs import new_flow_run_values
from models.requests import Recorded
from models.run_snapshots import (
    FlowRunSnapshot,
    InboxRecord,
    RunSnapshot,
    SlotChange,
    TaskRunSnapshot,
    TransitionWrite,
    WriteResult,
)
from models.schemas.actions import FlowRunCreate
from models.schemas.base import deep_copy
from models.schemas.responses import FlowRunResponse, OrchestrationResult
from models.schemas.states import AwaitingRetry, State, StateType
from models.task_run_state_cache import read_cached_state
from models.task_runs import failed_task_run_ids, reset_run_counts
from models.transition_sql import (
    FLOW_RUNS,
    TASK_RUNS,
    RunTables,
    is_conflict,
    keep_session_instance_in_step,
    lock_run,
    new_flow_run_snapshot,
    new_task_run_snapshot,
    read_flow_run_snapshot,
    read_task_run_snapshot,
    write_transition,
)
from models.types import now_utc
from orchestration.context import (
    FlowOrchestrationContext,
    OrchestrationContext,
    TaskOrchestrationContext,
    proposed_state_from,
    state_from_row,
)
from orchestration.engine import Policy, orchestrate
from orchestration.global_policy import GlobalFlowPolicy
from orchestration.policies import MinimalFlowPolicy
from orchestration.task_policy import BackgroundTaskPolicy, GlobalTaskPolicy, MinimalTaskPolicy

INBOX_ATTEMPTS = 3
"""Reads a create makes when its write finds the request's inbox row taken (by a copy of it)."""
MAX_ATTEMPTS = 20
"""Reads and decisions one transition may take when others keep changing the run meanwhile."""
LOCKED_AFTER = 3
"""Conflicts after which a transition holds the run's row lock from its read to its write, so that
a run others keep changing cannot make it lose every time (one optimistic writer can lose to the
others indefinitely; one holding the lock cannot lose to a change of the run)."""
CONFLICT_PAUSE_CAP_SECONDS = 0.05
"""After a conflict, a transition waits a random moment, up to 1 ms doubled per conflict and at
most this, before it reads again: writers that keep meeting on one run spread out instead of
one of them losing every time."""


class _Conflicts:
    """How many writes found the run moved on and decided again (per process; the bench shows it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self) -> None:
        with self._lock:
            self.count += 1


conflicts = _Conflicts()


@dataclasses.dataclass(frozen=True)
class Inbox:
    """The request a transition answers: its task id and name are recorded with the effect, and
    `encode` gives the outcome as the worker returns it (what a replay will answer)."""

    task_id: str
    name: str
    encode: Callable[[OrchestrationResult], Any]


@dataclasses.dataclass(frozen=True)
class Transition:
    """What a transition came to: its result (None for a replay), the outcome as recorded or to be
    returned (with an inbox), whether it was a replay, and how many slots it gave back."""

    result: OrchestrationResult | None
    encoded: Any = None
    replayed: bool = False
    slots_released: int = 0


# -- flow runs ----------------------------------------------------------------------------------


def set_flow_run_state(
    session: Session,
    flow_run_id: uuid.UUID,
    state: Any,
    force: bool = False,
    flow_policy: Policy | None = None,
    orchestration_parameters: dict[str, Any] | None = None,
    client_version: str | None = None,
    inbox: Inbox | None = None,
) -> Transition:
    """Propose `state` for the flow run under `flow_policy` (the minimal policy when forced or
    none is given), with Prefect's global flow transforms. `ObjectNotFoundError` for an unknown run."""
    proposal = proposed_state_from(state)
    policy = MinimalFlowPolicy if force or flow_policy is None else flow_policy
    transition_id = proposal.state_details.transition_id

    def read() -> tuple[FlowRunSnapshot | None, Recorded | None]:
        return read_flow_run_snapshot(session, flow_run_id, transition_id, inbox.task_id if inbox else None)

    def decide(snapshot: FlowRunSnapshot, proposed: State) -> FlowOrchestrationContext:
        return FlowOrchestrationContext(
            run=snapshot, initial_state=_current(snapshot), proposed_state=proposed,
            parameters=dict(orchestration_parameters or {}), client_version=client_version,
        )

    return _transition(session, FLOW_RUNS, flow_run_id, read, decide, proposal, policy, GlobalFlowPolicy, inbox,
                       missing=f"flow_run_id: no flow run with id {flow_run_id}")


def set_new_flow_run_state(
    session: Session, row: dict[str, Any], state: Any, write_with_first_state: bool,
    orchestration_parameters: dict[str, Any] | None = None,
) -> OrchestrationResult:
    """Force the first state of a run this transaction creates (`row`: every column's value). No
    one else can see the run, so there is nothing to read or compare; `write_with_first_state`:
    the run is not inserted yet and goes in with the state."""
    context = _new_run_context(row, state, write_with_first_state, orchestration_parameters)
    return decide_and_write(session, context, MinimalFlowPolicy, GlobalFlowPolicy)


def _new_run_context(
    row: dict[str, Any], state: Any, write_with_first_state: bool, orchestration_parameters: dict[str, Any] | None
) -> FlowOrchestrationContext:
    """The context of a new run's first state: nothing before it, the run as `row` has it."""
    return FlowOrchestrationContext(run=new_flow_run_snapshot(row, write_with_first_state), initial_state=None,
                                    proposed_state=proposed_state_from(state),
                                    parameters=dict(orchestration_parameters or {}))


def create_flow_run(session: Session, flow_run: FlowRunCreate, inbox: Inbox) -> Transition:
    """Create a run with its first state (forced) as the worker does, in two statements: the
    parents' read with the request's inbox record, then the run, its state and the inbox row
    together. For a run with a state and neither an idempotency key nor work-pool or queue names
    (`creatable_in_two_statements`); `models.flow_runs.create_flow_run` does every other create.
    `encoded` is the new run's response as `inbox.encode` gives it."""
    if flow_run.state is None or not creatable_in_two_statements(flow_run):
        raise ValueError("create_flow_run: give the run a state, and no idempotency key or work pool or queue")
    for _ in range(INBOX_ATTEMPTS):
        parents, recorded = read_parents_and_inbox(session, ParentIds.of(flow_run), inbox.task_id)
        if recorded is not None:
            return _replay(recorded, inbox)
        assert parents is not None
        row = new_run_row(new_flow_run_values(flow_run, parents, queue=None), idempotent=False)
        context = _new_run_context(row, flow_run.state, write_with_first_state=True, orchestration_parameters=None)
        _, read_values = _decide(context, MinimalFlowPolicy, GlobalFlowPolicy)
        write = _transition_write(context, read_values, None)
        assert write.new_run is not None
        encoded = inbox.encode(FlowRunResponse.from_orm_run(unattached_flow_run(write.new_run, write.state)))
        record = InboxRecord(inbox.task_id, inbox.name, encoded)
        if _write_guarded(session, FLOW_RUNS, dataclasses.replace(write, inbox=record)).applied:
            return Transition(result=None, encoded=encoded)
        # A copy of the request recorded first: the next read finds its record.
    raise sa_exc.OperationalError(
        "create", {}, RuntimeError(f"{inbox.name}[{inbox.task_id}]: the inbox row was taken but not found")
    )


def creatable_in_two_statements(flow_run: FlowRunCreate) -> bool:
    """Whether `create_flow_run` here can make this run (given a state): it has neither an
    idempotency key nor work-pool or queue names (each needs a look-up the write depends on)."""
    return not flow_run.idempotency_key and flow_run.work_pool_name is None and flow_run.work_queue_name is None


# -- task runs ----------------------------------------------------------------------------------


def set_task_run_state(
    session: Session,
    task_run_id: uuid.UUID,
    state: Any,
    force: bool = False,
    task_policy: Policy | None = None,
    orchestration_parameters: dict[str, Any] | None = None,
    inbox: Inbox | None = None,
) -> Transition:
    """Propose `state` for the task run under `task_policy` (the minimal task policy when forced or
    none is given; the background task policy for a deferred state, forced or not), with the global
    task transforms. `ObjectNotFoundError` for an unknown run."""
    proposal = proposed_state_from(state)
    policy = _task_policy_for(proposal, MinimalTaskPolicy if force or task_policy is None else task_policy)

    def read() -> tuple[TaskRunSnapshot | None, Recorded | None]:
        snapshot, recorded = read_task_run_snapshot(session, task_run_id, inbox.task_id if inbox else None)
        if snapshot is not None and recorded is None:
            snapshot.cached_state = _cached_state_for(session, proposal)
        return snapshot, recorded

    def decide(snapshot: TaskRunSnapshot, proposed: State) -> TaskOrchestrationContext:
        return TaskOrchestrationContext(run=snapshot, initial_state=_current(snapshot), proposed_state=proposed,
                                        parameters=dict(orchestration_parameters or {}))

    return _transition(session, TASK_RUNS, task_run_id, read, decide, proposal, policy, GlobalTaskPolicy, inbox,
                       missing=f"task_run_id: no task run with id {task_run_id}")


def set_new_task_run_state(
    session: Session, task_run: orm.TaskRun, state: Any, orchestration_parameters: dict[str, Any] | None = None
) -> OrchestrationResult:
    """Force the first state of a task run this transaction created (inserted, no state yet)."""
    proposal = proposed_state_from(state)
    snapshot = new_task_run_snapshot(task_run)
    snapshot.cached_state = _cached_state_for(session, proposal)
    context = TaskOrchestrationContext(run=snapshot, initial_state=None, proposed_state=proposal,
                                       parameters=dict(orchestration_parameters or {}))
    return decide_and_write(session, context, _task_policy_for(proposal, MinimalTaskPolicy), GlobalTaskPolicy)


def _task_policy_for(proposal: State, otherwise: Policy) -> Policy:
    """A deferred state (a background task's) goes through Prefect's background task policy."""
    return BackgroundTaskPolicy if proposal.state_details.deferred else otherwise


def _cached_state_for(session: Session, proposal: State) -> Any:
    """The cached state a start with this proposal's cache key would be handed (one query, only
    for a RUNNING proposal that carries a key and does not ask to refresh)."""
    details = proposal.state_details
    if proposal.type != StateType.RUNNING or not details.cache_key or details.refresh_cache:
        return None
    return read_cached_state(session, details.cache_key, now_utc())


# -- the loop -----------------------------------------------------------------------------------


def _transition(
    session: Session,
    tables: RunTables,
    run_id: uuid.UUID,
    read: Callable[[], tuple[Any, Recorded | None]],
    decide: Callable[[Any, State], OrchestrationContext[Any]],
    proposal: State,
    policy: Policy,
    global_policy: Policy,
    inbox: Inbox | None,
    missing: str,
) -> Transition:
    if session.autoflush:
        session.flush()  # as an ORM query would: the session's pending changes are what is read
    for attempt in range(MAX_ATTEMPTS):
        if attempt:
            time.sleep(random.uniform(0, min(0.001 * 2**attempt, CONFLICT_PAUSE_CAP_SECONDS)))
        with _holding_the_run(session, tables, run_id) if attempt >= LOCKED_AFTER else nullcontext():
            snapshot, recorded = read()
            if recorded is not None and inbox is not None:
                return _replay(recorded, inbox)
            if snapshot is None:
                raise ObjectNotFoundError(missing)
            context = decide(snapshot, deep_copy(proposal))  # each attempt decides on a fresh proposal
            result, read_values = _decide(context, policy, global_policy)
            encoded = inbox.encode(result) if inbox is not None else None
            record = InboxRecord(inbox.task_id, inbox.name, encoded) if inbox is not None else None
            written = _write(session, tables, context, read_values, record)
        if written.applied:
            if written.slots_released:
                note_released(session, written.slots_released)
            return Transition(result=result, encoded=encoded, slots_released=written.slots_released)
        conflicts.add()
    raise sa_exc.OperationalError(
        "transition", {}, RuntimeError(f"the run kept changing: no write applied in {MAX_ATTEMPTS} attempts")
    )


@contextmanager
def _holding_the_run(session: Session, tables: RunTables, run_id: uuid.UUID) -> Iterator[None]:
    """The run's row lock from before the read until the write commits: no one else can change the
    run meanwhile, so only a slot or the inbox row taken can still send the transition round again."""
    with explicit_transaction(session):
        lock_run(session, tables, run_id)
        yield


def _replay(recorded: Recorded, inbox: Inbox) -> Transition:
    """The outcome a committed copy of the request recorded (its task id used by another task is refused)."""
    if recorded.name != inbox.name:
        raise ValidationError(f"task_id: {inbox.task_id} was already used by task {recorded.name!r}")
    return Transition(result=None, encoded=recorded.outcome, replayed=True)


def decide_and_write(
    session: Session, context: OrchestrationContext[Any], policy: Policy, global_policy: Policy
) -> OrchestrationResult:
    """Decide the context's transition and write it once, for a run no one else can change
    meanwhile (one this transaction created): a conflict is an error, not a reason to retry."""
    tables = TASK_RUNS if isinstance(context, TaskOrchestrationContext) else FLOW_RUNS
    result, read_values = _decide(context, policy, global_policy)
    written = _write(session, tables, context, read_values, None)
    if not written.applied:
        raise RuntimeError(f"run {context.run.id} changed while its transition was decided")
    return result


def _decide(
    context: OrchestrationContext[Any], policy: Policy, global_policy: Policy
) -> tuple[OrchestrationResult, dict[str, Any]]:
    """The outcome, and the run's bookkeeping as read (what the rules changed is what differs)."""
    read_values = context.run.written_values()
    context.proposed_state.timestamp = now_utc()  # type: ignore[union-attr]
    return orchestrate(context, policy, global_policy), read_values


def _current(snapshot: RunSnapshot) -> State | None:
    return state_from_row(snapshot.state) if snapshot.state is not None else None


def _write(
    session: Session,
    tables: RunTables,
    context: OrchestrationContext[Any],
    read_values: dict[str, Any],
    record: InboxRecord | None,
) -> WriteResult:
    """Write the decided transition (and, in the same transaction, the other runs' transitions it
    asked for); applied False when the run had moved on and nothing was written."""
    write = _transition_write(context, read_values, record)
    effects = context.effects
    follow_on = bool(effects.follow_ons) or effects.reschedule_failed_task_runs_at is not None
    if not write.writes_anything and not follow_on:
        return WriteResult(applied=True)
    with explicit_transaction(session) if follow_on else nullcontext():
        written = _write_guarded(session, tables, write)
        if written.applied and follow_on:
            _make_follow_ons(session, context)
    if written.applied:
        keep_session_instance_in_step(session, tables, write.run_id, write.run_changes, write.state)
    return written


def _write_guarded(session: Session, tables: RunTables, write: TransitionWrite) -> WriteResult:
    """The write; a conflict it raised (a slot or the inbox row taken) is reported as not applied.
    Inside a transaction that must go on, the write gets a savepoint of its own when it can raise."""
    can_raise = write.slots.acquire_limit_id is not None or write.inbox is not None
    try:
        with _savepoint_if_in_a_transaction(session) if can_raise else nullcontext():
            return write_transition(session, tables, write)
    except sa_exc.DBAPIError as error:
        if not is_conflict(error):
            raise
        return WriteResult(applied=False)


@contextmanager
def _savepoint_if_in_a_transaction(session: Session) -> Iterator[None]:
    """A SAVEPOINT around the write when the session's connection is in a transaction (the caller's,
    in-process, or one `explicit_transaction` opened): a raised conflict then undoes only the write.
    In autocommit mode the failed statement undoes itself."""
    if commits_each_statement(session) or dialect_name(session) != "postgresql":
        yield
        return
    connection = session.connection()
    savepoint = connection.begin_nested()
    try:
        yield
    except BaseException:
        savepoint.rollback()
        raise
    if savepoint.is_active:
        savepoint.commit()


def _transition_write(
    context: OrchestrationContext[Any], read_values: dict[str, Any], record: InboxRecord | None
) -> TransitionWrite:
    snapshot = context.run
    current = snapshot.written_values()
    changes = {
        name: value for name, value in current.items()
        if value is not read_values[name] and value != read_values[name]
    }
    if changes:
        changes["updated"] = now_utc()
    effects = context.effects
    slots = SlotChange(acquire_limit_id=effects.acquire_limit_id, holding_id=effects.holding_id,
                       release=effects.release_slots)
    new_run = None
    if snapshot.new_row is not None:
        new_run = {**snapshot.new_row, **current, **changes}
    return TransitionWrite(
        run_id=snapshot.id,
        seen_state_id=snapshot.state.id if snapshot.state is not None else None,
        seen_updated=snapshot.updated if isinstance(snapshot, FlowRunSnapshot) else None,
        state=context.written_state,
        run_changes=changes,
        new_run=new_run,
        slots=slots,
        cache_entry=effects.cache_entry,
        inbox=record,
    )


def _make_follow_ons(session: Session, context: OrchestrationContext[Any]) -> None:
    effects = context.effects
    for follow_on in effects.follow_ons:
        set_task_run_state(session, follow_on.task_run_id, follow_on.state, force=True)
    if effects.reschedule_failed_task_runs_at is not None:
        rescheduled = failed_task_run_ids(session, context.run.id)
        for task_run_id in rescheduled:
            retry = AwaitingRetry(scheduled_time=effects.reschedule_failed_task_runs_at)
            set_task_run_state(session, task_run_id, retry, force=True)
        reset_run_counts(session, rescheduled)
