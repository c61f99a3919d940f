"""The engine: rule life cycle (enter, validate, exit in reverse; invalid, fizzle, cleanup),
the write, and `set_flow_run_state`'s contract around it."""

import datetime
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from models import database, flow_runs, orm
from models.errors import ObjectNotFoundError, ValidationError
from models.schemas import actions, core, states
from models.schemas.responses import SetStateStatus
from models.schemas.states import State, StateDetails, StateType
from models.types import now_utc
from orchestration import CoreFlowPolicy, GlobalFlowPolicy, MinimalFlowPolicy
from orchestration.context import FlowOrchestrationContext, state_from_row
from models.transition_sql import read_flow_run_snapshot
from orchestration.engine import compile_transition_rules
from orchestration.service import decide_and_write
from orchestration.rules import ALL_ORCHESTRATION_STATES, OrchestrationRule, UniversalTransform
from tests.fixtures import make_deployment, make_flow_run

Ctx = FlowOrchestrationContext


def context_for(session: Session, run: orm.FlowRun, proposed: State) -> Ctx:
    """The context the transition service builds: the run's snapshot, with the session bound for
    `orchestrate` below to write what the rules decide."""
    session.flush()
    snapshot, _ = read_flow_run_snapshot(session, run.id, None)
    assert snapshot is not None
    initial = state_from_row(snapshot.state) if snapshot.state is not None else None
    context = FlowOrchestrationContext(run=snapshot, initial_state=initial, proposed_state=proposed)
    _SESSIONS[id(context)] = session
    return context


_SESSIONS: dict[int, Session] = {}


def orchestrate(context: Ctx, policy: Any, global_policy: Any) -> Any:
    """Decide and write, as the transition service does for a run no one else changes meanwhile."""
    return decide_and_write(_SESSIONS.pop(id(context)), context, policy, global_policy)


def force(session: Session, run: orm.FlowRun, state: State) -> None:
    flow_runs.set_flow_run_state(session, run.id, state, force=True)
    session.commit()


def recording(
    log: list[str],
    name: str,
    verdict: Callable[[OrchestrationRule[Ctx]], None] | None = None,
    from_states: frozenset[Any] = ALL_ORCHESTRATION_STATES,
    to_states: frozenset[Any] = frozenset(StateType),
) -> type[OrchestrationRule[Ctx]]:
    """A rule class that logs its hooks and, on entry, applies `verdict`."""

    class Recorder(OrchestrationRule[Ctx]):
        FROM_STATES = from_states
        TO_STATES = to_states

        def before_transition(self, initial: Any, proposed: Any, context: Ctx) -> None:
            log.append(f"{name}.before")
            if verdict is not None:
                verdict(self)

        def after_transition(self, initial: Any, validated: Any, context: Ctx) -> None:
            log.append(f"{name}.after")

        def cleanup(self, initial: Any, validated: Any, context: Ctx) -> None:
            log.append(f"{name}.cleanup")

    Recorder.__name__ = name
    return Recorder


@pytest.fixture
def pending_run(session: Session, flow: orm.Flow) -> orm.FlowRun:
    run = make_flow_run(session, flow)
    force(session, run, states.Pending())
    return run


# -- life cycle -----------------------------------------------------------------------------------


def test_rules_enter_in_priority_order_and_exit_in_reverse(
    session: Session, pending_run: orm.FlowRun
) -> None:
    log: list[str] = []
    policy = [recording(log, "first"), recording(log, "second"), recording(log, "third")]

    result = orchestrate(context_for(session, pending_run, states.Running()), policy, [])

    assert result.status == SetStateStatus.ACCEPT
    assert log == [
        "first.before",
        "second.before",
        "third.before",
        "third.after",
        "second.after",
        "first.after",
    ]


def test_rule_that_does_not_guard_the_transition_never_fires(
    session: Session, pending_run: orm.FlowRun
) -> None:
    log: list[str] = []
    policy = [recording(log, "to_failed", to_states=frozenset({StateType.FAILED}))]
    context = context_for(session, pending_run, states.Running())

    assert compile_transition_rules(policy, StateType.PENDING, StateType.RUNNING) == []
    policy[0](context, StateType.PENDING, StateType.RUNNING).__enter__()
    assert log == []


def test_rule_after_an_earlier_change_of_type_never_fires(session: Session, pending_run: orm.FlowRun) -> None:
    log: list[str] = []
    policy = [
        recording(log, "rejecter", lambda rule: rule.reject_transition(states.Failed(), "no")),
        recording(log, "later"),
    ]

    result = orchestrate(context_for(session, pending_run, states.Running()), policy, [])

    assert result.status == SetStateStatus.REJECT and result.state.type == StateType.FAILED
    assert log == ["rejecter.before", "rejecter.after"]  # the rejecter does not fizzle itself


def test_rule_overruled_by_a_later_rule_fizzles_and_cleans_up(
    session: Session, pending_run: orm.FlowRun
) -> None:
    log: list[str] = []
    policy = [
        recording(log, "acquirer"),
        recording(log, "waiter", lambda rule: rule.delay_transition(5, "later")),
    ]

    result = orchestrate(context_for(session, pending_run, states.Running()), policy, [])

    assert result.status == SetStateStatus.WAIT and result.details.delay_seconds == 5
    assert log == ["acquirer.before", "waiter.before", "acquirer.cleanup"]


def test_rule_that_rejects_without_replacement_gets_no_exit_hook(
    session: Session, pending_run: orm.FlowRun
) -> None:
    log: list[str] = []
    policy = [recording(log, "refuser", lambda rule: rule.reject_transition(None, "no"))]

    result = orchestrate(context_for(session, pending_run, states.Running()), policy, [])

    assert result.status == SetStateStatus.REJECT
    assert result.state.type == StateType.PENDING
    assert log == ["refuser.before"]


def test_error_in_a_rule_aborts_writes_nothing_and_is_raised_after_cleanup(
    session: Session, pending_run: orm.FlowRun
) -> None:
    log: list[str] = []

    def explode(rule: OrchestrationRule[Ctx]) -> None:
        raise KeyError("broken rule")

    class Bookkeeper(UniversalTransform[Ctx]):
        def after_transition(self, context: Ctx) -> None:
            log.append("bookkeeper.after")

    policy = [recording(log, "acquirer"), recording(log, "broken", explode)]
    context = context_for(session, pending_run, states.Running())

    with pytest.raises(KeyError, match="broken rule"):
        orchestrate(context, policy, [Bookkeeper])

    assert log == ["acquirer.before", "broken.before", "broken.cleanup", "acquirer.cleanup"]
    assert context.response_status == SetStateStatus.ABORT
    assert "Aborting orchestration due to error in broken" in context.response_details.reason
    assert context.run.state_type == StateType.PENDING


def test_hooks_get_a_copy_whose_details_are_shared(session: Session, pending_run: orm.FlowRun) -> None:
    class Meddler(OrchestrationRule[Ctx]):
        FROM_STATES = TO_STATES = ALL_ORCHESTRATION_STATES

        def before_transition(self, initial: Any, proposed: Any, context: Ctx) -> None:
            proposed.state_details.pause_key = "edited"
            context.proposed_state = states.Failed()  # replacing on the copy changes nothing

    result = orchestrate(context_for(session, pending_run, states.Running()), [Meddler], [])

    assert result.state.type == StateType.RUNNING
    assert result.state.state_details.pause_key == "edited"


def test_transforms_see_the_final_proposal(session: Session, pending_run: orm.FlowRun) -> None:
    rejecter = recording([], "rejecter", lambda rule: rule.reject_transition(states.Crashed(), "no"))

    orchestrate(context_for(session, pending_run, states.Running()), [rejecter], GlobalFlowPolicy)

    run = session.get(orm.FlowRun, pending_run.id)
    assert run is not None and run.state_type == StateType.CRASHED and run.end_time is not None


def test_delay_writes_nothing_and_returns_the_current_state(
    session: Session, pending_run: orm.FlowRun
) -> None:
    waiter = recording([], "waiter", lambda rule: rule.delay_transition(3, "soon"))
    current_id = pending_run.state_id

    result = orchestrate(context_for(session, pending_run, states.Running()), [waiter], GlobalFlowPolicy)

    assert result.status == SetStateStatus.WAIT
    assert result.state.id == current_id
    assert pending_run.state_type == StateType.PENDING


def test_rejection_without_replacement_of_a_stateless_run_is_an_error(
    session: Session, flow: orm.Flow
) -> None:
    run = make_flow_run(session, flow)
    refuser = recording([], "refuser", lambda rule: rule.reject_transition(None, "no"))

    with pytest.raises(RuntimeError, match="no state"):
        orchestrate(context_for(session, run, states.Running()), [refuser], [])


def test_unstorable_data_aborts_and_writes_nothing(session: Session, pending_run: orm.FlowRun) -> None:
    result = flow_runs.set_flow_run_state(session, pending_run.id, states.Running(data=object()))

    assert result.status == SetStateStatus.ABORT
    assert result.details.reason.startswith("Error validating state")
    assert result.state.type == StateType.PENDING


def test_stateless_run_that_writes_nothing_returns_no_state(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow)

    result = flow_runs.set_flow_run_state(session, run.id, states.Paused(), flow_policy=CoreFlowPolicy)

    assert result.status == SetStateStatus.ABORT and result.state is None


# -- set_flow_run_state ------------------------------------------------------------------------


def test_unknown_run_is_not_found(session: Session) -> None:
    missing = uuid.uuid4()

    with pytest.raises(ObjectNotFoundError, match=str(missing)):
        flow_runs.set_flow_run_state(session, missing, states.Running())


@pytest.mark.parametrize(
    "given",
    [
        states.Running(message="hi"),
        actions.StateCreate(type="RUNNING", message="hi"),
        {"type": "RUNNING", "message": "hi"},
    ],
    ids=["State", "StateCreate", "dict"],
)
def test_state_is_accepted_as_state_state_create_or_dict(
    session: Session, pending_run: orm.FlowRun, given: Any
) -> None:
    result = flow_runs.set_flow_run_state(session, pending_run.id, given, flow_policy=CoreFlowPolicy)

    assert result.status == SetStateStatus.ACCEPT
    assert (result.state.type, result.state.name, result.state.message) == (
        StateType.RUNNING,
        "Running",
        "hi",
    )


def test_invalid_state_is_a_validation_error_naming_the_field(
    session: Session, pending_run: orm.FlowRun
) -> None:
    with pytest.raises(ValidationError, match="type"):
        flow_runs.set_flow_run_state(session, pending_run.id, {"type": "SLEEPING"})


def test_callers_state_id_is_kept_and_its_object_untouched(
    session: Session, pending_run: orm.FlowRun
) -> None:
    proposed = states.Running(timestamp=now_utc() - datetime.timedelta(days=1))
    original = proposed.model_copy(deep=True)

    result = flow_runs.set_flow_run_state(session, pending_run.id, proposed, flow_policy=CoreFlowPolicy)

    assert result.state.id == proposed.id
    assert proposed == original
    assert result.state.state_details.flow_run_id == pending_run.id


def test_timestamp_is_taken_once_the_run_is_locked(session: Session, pending_run: orm.FlowRun) -> None:
    built = states.Running()
    before = now_utc()

    result = flow_runs.set_flow_run_state(session, pending_run.id, built, flow_policy=CoreFlowPolicy)

    assert result.state.timestamp >= before > built.timestamp
    assert pending_run.state_timestamp == result.state.timestamp


def test_validated_state_carries_its_data(session: Session, pending_run: orm.FlowRun) -> None:
    data = {"type": "reference", "storage_key": "k"}

    result = flow_runs.set_flow_run_state(session, pending_run.id, states.Completed(data=data), force=True)
    session.commit()
    session.expunge_all()

    assert result.state.data == data
    assert flow_runs.read_flow_run(session, pending_run.id).state.data == data  # type: ignore[union-attr]


def test_unpersisted_result_marker_is_returned_but_not_stored(
    session: Session, pending_run: orm.FlowRun
) -> None:
    marker = {"type": "unpersisted"}

    result = flow_runs.set_flow_run_state(session, pending_run.id, states.Completed(data=marker), force=True)

    assert result.state.data == marker
    assert session.get(orm.FlowRunState, result.state.id).data is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "kwargs", [{"force": True, "flow_policy": CoreFlowPolicy}, {}], ids=["force", "no-policy"]
)
def test_force_or_no_policy_applies_the_minimal_policy(
    session: Session, flow: orm.Flow, kwargs: dict[str, Any]
) -> None:
    run = make_flow_run(session, flow)
    force(session, run, states.Failed())

    result = flow_runs.set_flow_run_state(session, run.id, states.Crashed(), **kwargs)

    assert result.status == SetStateStatus.ACCEPT  # the core policy would abort
    assert MinimalFlowPolicy != CoreFlowPolicy


def test_orchestration_parameters_and_client_version_reach_the_rules(
    session: Session, pending_run: orm.FlowRun
) -> None:
    seen: dict[str, Any] = {}

    class Spy(OrchestrationRule[Ctx]):
        FROM_STATES = TO_STATES = ALL_ORCHESTRATION_STATES

        def before_transition(self, initial: Any, proposed: Any, context: Ctx) -> None:
            seen.update(parameters=context.parameters, client_version=context.client_version)

    flow_runs.set_flow_run_state(
        session,
        pending_run.id,
        states.Running(),
        flow_policy=[Spy],
        orchestration_parameters={"api-version": "0.8.4"},
        client_version="3.4.11",
    )

    assert seen == {"parameters": {"api-version": "0.8.4"}, "client_version": "3.4.11"}


# -- cost of a transition ------------------------------------------------------------------------


@contextmanager
def statements(session: Session) -> Iterator[list[str]]:
    seen: list[str] = []
    engine = session.get_bind()

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not statement.startswith(("BEGIN", "SAVEPOINT", "RELEASE")):
            seen.append(statement.split(None, 1)[0].upper())

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _written(session: Session, *statements: str) -> list[str]:
    """A transition's write as sent: on PostgreSQL one `WITH ...` statement (a single round trip);
    on SQLite a SELECT comparing the run's current state, then `statements`."""
    if session.get_bind().dialect.name == "postgresql":
        return ["WITH"]
    return ["SELECT", *statements]


@pytest.fixture(params=["worker session", "session holding the run"])
def holds_run(request: pytest.FixtureRequest) -> bool:
    """A worker's session knows nothing of the run (the Core path); a session that already holds
    it as an ORM instance locks that instance instead."""
    return bool(request.param == "session holding the run")


def test_transition_costs_one_locked_read_and_one_write(
    session: Session, pending_run: orm.FlowRun, holds_run: bool
) -> None:
    if not holds_run:
        session.expunge_all()

    with statements(session) as seen:
        flow_runs.set_flow_run_state(session, pending_run.id, states.Running(), flow_policy=CoreFlowPolicy)

    assert seen == ["SELECT", *_written(session, "INSERT", "UPDATE")]


def test_transition_id_costs_one_indexed_history_lookup(
    session: Session, pending_run: orm.FlowRun, holds_run: bool
) -> None:
    proposed = states.Running(state_details=StateDetails(transition_id=uuid.uuid4()))
    if not holds_run:
        session.expunge_all()

    with statements(session) as seen:
        flow_runs.set_flow_run_state(session, pending_run.id, proposed, flow_policy=CoreFlowPolicy)

    # the run's read looks the history up too, whoever holds the run
    assert seen == ["SELECT", *_written(session, "INSERT", "UPDATE")]


def test_submission_with_a_limit_loads_the_deployment_once(
    session: Session, flow: orm.Flow, holds_run: bool
) -> None:
    deployment = make_deployment(session, flow, name="limited", concurrency_limit=3)
    run = make_flow_run(session, flow, deployment_id=deployment.id)
    force(session, run, states.Scheduled())
    if not holds_run:
        session.expunge_all()

    with statements(session) as seen:
        result = flow_runs.set_flow_run_state(session, run.id, states.Pending(), flow_policy=CoreFlowPolicy)

    assert result.status == SetStateStatus.ACCEPT
    # the run with its deployment, limit and holding; then one write: the state, the run, the slot
    # taken and its holding (on PostgreSQL one statement)
    assert seen == ["SELECT", *_written(session, "INSERT", "UPDATE", "UPDATE", "INSERT")]


def test_completion_without_a_slot_releases_nothing(session: Session, flow: orm.Flow) -> None:
    deployment = make_deployment(session, flow, name="unlimited")
    run = make_flow_run(session, flow, deployment_id=deployment.id)
    force(session, run, states.Running())
    session.expunge_all()

    with statements(session) as seen:
        flow_runs.set_flow_run_state(session, run.id, states.Completed(), flow_policy=CoreFlowPolicy)

    # the read saw that the run holds no slot: no DELETE of its holdings
    assert seen == ["SELECT", *_written(session, "INSERT", "UPDATE")]


def test_create_with_a_state_costs_the_parents_read_and_one_write(session: Session, flow: orm.Flow) -> None:
    session.commit()
    session.expunge_all()
    scheduled_time = now_utc() + datetime.timedelta(minutes=5)

    with statements(session) as seen:
        created = flow_runs.create_flow_run(
            session, core.FlowRun(flow_id=flow.id, state=states.Scheduled(scheduled_time=scheduled_time))
        )
    session.commit()

    # on PostgreSQL the run and its first state go in one statement (the run's INSERT as a CTE)
    sqlite = ["SELECT", "INSERT", *_written(session, "INSERT", "UPDATE")]  # the run, then its first state
    assert seen == (["SELECT", "WITH"] if session.get_bind().dialect.name == "postgresql" else sqlite)
    session.expunge_all()
    run = session.get(orm.FlowRun, created.id)
    assert run is not None and run.state is not None
    assert run.state.flow_run_id == run.id and run.state_type == StateType.SCHEDULED
    assert run.next_scheduled_start_time == scheduled_time == run.expected_start_time
    history = session.scalars(sa.select(orm.FlowRunState).where(orm.FlowRunState.flow_run_id == run.id)).all()
    assert [state.id for state in history] == [run.state_id]


def test_create_whose_state_cannot_be_stored_still_creates_the_run(session: Session, flow: orm.Flow) -> None:
    unstorable = states.Scheduled(data={"not json": object()})

    created = flow_runs.create_flow_run(session, core.FlowRun(flow_id=flow.id, state=unstorable))
    session.commit()
    session.expunge_all()

    run = session.get(orm.FlowRun, created.id)
    assert run is not None and run.state_id is None
    # as Prefect: the global transforms had set the run's state columns before the proposal
    # failed to store, and the run keeps them
    assert run.state_type == StateType.SCHEDULED
    assert session.scalar(sa.select(sa.func.count()).select_from(orm.FlowRunState)) == 0


# -- the row lock ---------------------------------------------------------------------------------


@pytest.mark.postgres_only
def test_racing_submissions_of_one_run_admit_exactly_one(db: str, session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow)
    force(session, run, states.Scheduled())
    workers = 8
    barrier = threading.Barrier(workers)
    outcomes: list[SetStateStatus] = []

    def submit() -> None:
        with database.unit_of_work(db) as own:
            barrier.wait()
            outcomes.append(
                flow_runs.set_flow_run_state(own, run.id, states.Pending(), flow_policy=CoreFlowPolicy).status
            )

    threads = [threading.Thread(target=submit) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == sorted([SetStateStatus.ACCEPT] + [SetStateStatus.ABORT] * (workers - 1)), (
        outcomes
    )
    count = session.execute(
        sa.select(sa.func.count()).select_from(orm.FlowRunState).where(orm.FlowRunState.flow_run_id == run.id)
    ).scalar_one()
    assert count == 2
