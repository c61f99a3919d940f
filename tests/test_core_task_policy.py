"""Each rule of the core task policy (but the cache's, see test_task_run_cache.py), one test per
outcome, through `models.task_runs.set_task_run_state`: the status, the reason as Prefect 3.9.1
words it, the state written and the run's counters."""

import datetime
import math
import uuid

import pytest
from sqlalchemy.orm import Session

from models import flow_runs, orm, task_runs
from models.schemas import actions, states
from models.schemas.core import TaskRunPolicy
from models.schemas.responses import SetStateStatus
from models.schemas.states import State, StateType
from orchestration.jitter import clamped_poisson_interval, lower_bound_multiple
from orchestration.task_retries import retry_delay_seconds
from tests.task_run_helpers import (
    PERSISTED,
    completed,
    flow_run_in,
    force,
    future,
    history,
    lock_path,  # noqa: F401
    past,
    propose,
    stored,
    task_run_in,
)

pytestmark = pytest.mark.usefixtures("lock_path")

NOT_RUNNING = "The enclosing flow must be running to begin task execution."


@pytest.fixture
def flow_run(session: Session, flow: orm.Flow) -> orm.FlowRun:
    """A RUNNING flow run (its first attempt)."""
    return flow_run_in(session, flow, states.Pending(), states.Running())


def retrying(**policy: object) -> dict[str, object]:
    return {"empirical_policy": TaskRunPolicy.model_validate(policy)}


def started(session: Session, flow_run: orm.FlowRun, *then: State, **fields: object) -> orm.TaskRun:
    """A task run started under the core policy (so it tracks its flow attempt), then forced
    through `then`."""
    task_run = task_run_in(session, flow_run, **fields)
    assert propose(session, task_run, states.Running()).status == SetStateStatus.ACCEPT
    for state in then:
        force(session, task_run, state)
    return task_run


def seconds_after(state: State, moment: datetime.datetime) -> float:
    scheduled = state.state_details.scheduled_time
    assert scheduled is not None
    return (scheduled - moment).total_seconds()


# -- HandleTaskTerminalStateTransitions --------------------------------------------------------


@pytest.mark.parametrize(
    ("terminal", "proposed"),
    [
        (states.Completed, states.Cancelling),
        (states.Failed, states.Paused),
        (states.Cancelled, states.Crashed),
        (states.Crashed, states.Crashed),
    ],
)
def test_finished_task_run_cannot_be_cancelling_paused_or_crashed(
    session: Session, flow_run: orm.FlowRun, terminal: type, proposed: type
) -> None:
    task_run = started(session, flow_run, terminal())

    result = propose(session, task_run, proposed())

    assert result.status == SetStateStatus.ABORT
    assert result.details.reason == f"Run is already {task_run.state_type.value}."
    assert result.state is not None and result.state.type == task_run.state_type
    assert history(session, task_run) == ["Pending", "Running", terminal().name]


@pytest.mark.parametrize("proposed", [states.Running, states.Failed, states.Scheduled])
def test_completed_task_with_persisted_result_cannot_run_again(
    session: Session, flow_run: orm.FlowRun, proposed: type
) -> None:
    task_run = started(session, flow_run, completed(PERSISTED))

    result = propose(session, task_run, proposed())

    assert (result.status, result.details.reason) == (SetStateStatus.REJECT, "This run is already completed.")
    assert result.state is not None and (result.state.type, result.state.data) == (StateType.COMPLETED, PERSISTED)
    assert (stored(session, task_run).state_type, stored(session, task_run).run_count) == (StateType.COMPLETED, 1)
    assert history(session, task_run) == ["Pending", "Running", "Completed"]


@pytest.mark.parametrize("data", [None, {"type": "unpersisted"}, {}])
def test_completed_task_without_persisted_result_reruns_with_its_retries_reset(
    session: Session, flow_run: orm.FlowRun, data: object
) -> None:
    task_run = started(session, flow_run, completed(data))

    result = propose(session, task_run, states.Running())

    assert result.status == SetStateStatus.ACCEPT
    # run_count went back to 0 before this start counted: not "Rerunning", and 1 rather than 2
    assert (result.state.type, result.state.name) == (StateType.RUNNING, "Running")
    assert stored(session, task_run).run_count == 1
    assert history(session, task_run) == ["Pending", "Running", "Completed", "Running"]


def test_failed_task_leaving_for_a_final_state_keeps_its_run_count(session: Session, flow_run: orm.FlowRun) -> None:
    task_run = started(session, flow_run, states.Failed())

    result = propose(session, task_run, states.Cancelled())

    assert (result.status, result.state.type) == (SetStateStatus.ACCEPT, StateType.CANCELLED)
    assert stored(session, task_run).run_count == 1


def test_failed_task_rerun_by_a_retried_flow_run_is_named_retrying(
    session: Session, flow: orm.Flow, flow_run: orm.FlowRun
) -> None:
    task_run = started(session, flow_run)
    assert propose(session, task_run, states.Failed()).status == SetStateStatus.ACCEPT
    for state in (states.Failed(), states.Running()):  # the flow run's second attempt
        flow_runs.set_flow_run_state(session, flow_run.id, state, force=True)
        session.commit()

    result = propose(session, task_run, states.Running())

    assert result.status == SetStateStatus.ACCEPT
    assert (result.state.type, result.state.name) == (StateType.RUNNING, "Retrying")
    row = stored(session, task_run)
    assert (row.run_count, row.flow_run_run_count, row.state_name) == (1, 2, "Retrying")
    assert history(session, task_run) == ["Pending", "Running", "Failed", "Retrying"]


def test_rerun_refused_by_a_later_rule_keeps_its_run_count(session: Session, flow: orm.Flow) -> None:
    flow_run = flow_run_in(session, flow, states.Pending(), states.Running())
    task_run = started(session, flow_run, states.Failed())
    flow_runs.set_flow_run_state(session, flow_run.id, states.Completed(), force=True)
    session.commit()

    result = propose(session, task_run, states.Running())

    assert (result.status, result.details.reason) == (SetStateStatus.ABORT, NOT_RUNNING)
    # HandleTaskTerminalStateTransitions reset it to 0, then fizzled and put it back
    row = stored(session, task_run)
    assert (row.run_count, row.state_type) == (1, StateType.FAILED)
    assert history(session, task_run) == ["Pending", "Running", "Failed"]


# -- PreventRunningTasksFromStoppedFlows -------------------------------------------------------


@pytest.mark.parametrize(
    "flow_states",
    [(), (states.Pending(),), (states.Scheduled(),), (states.Pending(), states.Running(), states.Completed())],
    ids=["no state", "PENDING", "SCHEDULED", "COMPLETED"],
)
def test_task_cannot_start_unless_its_flow_run_is_running(
    session: Session, flow: orm.Flow, flow_states: tuple[State, ...]
) -> None:
    task_run = task_run_in(session, flow_run_in(session, flow, *flow_states))

    result = propose(session, task_run, states.Running())

    assert (result.status, result.details.reason) == (SetStateStatus.ABORT, NOT_RUNNING)
    assert result.state is not None and result.state.type == StateType.PENDING
    row = stored(session, task_run)
    assert (row.state_type, row.run_count, row.start_time) == (StateType.PENDING, 0, None)
    assert history(session, task_run) == ["Pending"]


@pytest.mark.parametrize("reschedule", [False, True])
def test_task_of_a_paused_flow_run_is_paused_not_ready(
    session: Session, flow: orm.Flow, reschedule: bool
) -> None:
    pause = states.Paused(timeout_seconds=600, reschedule=reschedule)
    flow_run = flow_run_in(session, flow, states.Pending(), states.Running(), pause)
    task_run = task_run_in(session, flow_run)

    result = propose(session, task_run, states.Running())

    assert result.status == SetStateStatus.REJECT
    assert result.details.reason == (
        f"The flow is paused, new tasks can execute after resuming flow run: {flow_run.id}."
    )
    assert (result.state.type, result.state.name) == (StateType.PAUSED, "NotReady")
    assert result.state.state_details.pause_timeout == pause.state_details.pause_timeout
    assert result.state.state_details.pause_reschedule is reschedule
    row = stored(session, task_run)
    assert (row.state_type, row.state_name, row.run_count, row.flow_run_run_count) == (
        StateType.PAUSED, "NotReady", 0, 0,
    )
    assert history(session, task_run) == ["Pending", "NotReady"]


def test_task_run_without_a_flow_run_may_start(session: Session) -> None:
    task_run = task_run_in(session, None)

    result = propose(session, task_run, states.Running())

    assert (result.status, result.state.name) == (SetStateStatus.ACCEPT, "Running")
    assert (stored(session, task_run).run_count, stored(session, task_run).flow_run_run_count) == (1, 0)


def test_forced_start_skips_the_core_rules(session: Session, flow: orm.Flow) -> None:
    task_run = task_run_in(session, flow_run_in(session, flow, states.Pending()))

    result = force(session, task_run, states.Running())

    assert (result.status, result.state.type) == (SetStateStatus.ACCEPT, StateType.RUNNING)
    row = stored(session, task_run)
    assert (row.run_count, row.flow_run_run_count) == (1, 0)  # the tracker is a core rule
    assert history(session, task_run) == ["Pending", "Running"]


# -- CopyScheduledTime and WaitForScheduledTime -------------------------------------------------


def test_pending_task_keeps_the_time_it_was_scheduled_for(session: Session, flow_run: orm.FlowRun) -> None:
    when = past(5)
    task_run = task_run_in(session, flow_run, states.Scheduled(scheduled_time=when))

    result = propose(session, task_run, states.Pending())

    assert (result.status, result.state.state_details.scheduled_time) == (SetStateStatus.ACCEPT, when)


def test_pending_task_with_its_own_scheduled_time_keeps_it(session: Session, flow_run: orm.FlowRun) -> None:
    own = past(1)
    task_run = task_run_in(session, flow_run, states.Scheduled(scheduled_time=past(5)))

    result = propose(session, task_run, states.Pending(state_details={"scheduled_time": own}))

    assert result.state.state_details.scheduled_time == own


def test_task_scheduled_in_the_future_is_told_to_wait(session: Session, flow_run: orm.FlowRun) -> None:
    task_run = task_run_in(session, flow_run, states.Scheduled(scheduled_time=future(120)))

    result = propose(session, task_run, states.Running())

    assert result.status == SetStateStatus.WAIT
    assert result.details.reason == "Scheduled time is in the future"
    assert 118 <= result.details.delay_seconds <= 120
    assert (stored(session, task_run).state_type, history(session, task_run)) == (
        StateType.SCHEDULED, ["Pending", "Scheduled"],
    )


# -- RetryFailedTasks ---------------------------------------------------------------------------


def test_failure_with_retries_left_awaits_retry(session: Session, flow_run: orm.FlowRun) -> None:
    task_run = task_run_in(session, flow_run, **retrying(retries=2, retry_delay=30))
    propose(session, task_run, states.Running())
    before = datetime.datetime.now(datetime.UTC)

    result = propose(session, task_run, states.Failed(message="boom", data={"type": "unpersisted"}))

    assert (result.status, result.details.reason) == (SetStateStatus.REJECT, "Retrying")
    assert (result.state.type, result.state.name, result.state.message) == (
        StateType.SCHEDULED, "AwaitingRetry", "boom",
    )
    assert 29 <= seconds_after(result.state, before) <= 31
    row = stored(session, task_run)
    assert (row.state_name, row.run_count, row.flow_run_run_count) == ("AwaitingRetry", 1, 1)
    assert history(session, task_run) == ["Pending", "Running", "AwaitingRetry"]


def test_retry_delays_listed_per_attempt_are_used_in_turn_the_last_repeating(
    session: Session, flow_run: orm.FlowRun
) -> None:
    task_run = task_run_in(session, flow_run, **retrying(retries=3, retry_delay=[10, 20]))
    delays = []
    for _ in range(3):
        force(session, task_run, states.Running())
        before = datetime.datetime.now(datetime.UTC)
        result = propose(session, task_run, states.Failed())
        assert result.state.name == "AwaitingRetry"
        delays.append(round(seconds_after(result.state, before)))

    assert delays == [10, 20, 20]


def test_jittered_retry_delays_stay_within_the_clamped_window(session: Session, flow_run: orm.FlowRun) -> None:
    task_run = task_run_in(session, flow_run, **retrying(retries=12, retry_delay=100, retry_jitter_factor=0.5))
    delays = []
    for _ in range(12):
        force(session, task_run, states.Running())
        before = datetime.datetime.now(datetime.UTC)
        result = propose(session, task_run, states.Failed())
        delays.append(seconds_after(result.state, before))

    lowest = 100 * lower_bound_multiple(1.5)
    assert all(lowest - 1 <= delay <= 150 + 1 for delay in delays), delays
    assert any(abs(delay - 100) > 1 for delay in delays), delays  # jittered, not 100 every time


def test_failure_stands_once_retries_are_exhausted(session: Session, flow_run: orm.FlowRun) -> None:
    task_run = task_run_in(session, flow_run, **retrying(retries=1))
    propose(session, task_run, states.Running())
    assert propose(session, task_run, states.Failed()).state.name == "AwaitingRetry"
    assert propose(session, task_run, states.Running()).state.name == "Retrying"

    result = propose(session, task_run, states.Failed())

    assert (result.status, result.state.type) == (SetStateStatus.ACCEPT, StateType.FAILED)
    assert stored(session, task_run).run_count == 2
    assert history(session, task_run) == ["Pending", "Running", "AwaitingRetry", "Retrying", "Failed"]


@pytest.mark.parametrize(
    ("policy", "details"),
    [({}, {}), ({"retries": 3}, {"retriable": False})],
    ids=["no retries", "not retriable"],
)
def test_failure_without_retries_or_not_retriable_stands(
    session: Session, flow_run: orm.FlowRun, policy: dict[str, object], details: dict[str, object]
) -> None:
    task_run = task_run_in(session, flow_run, **retrying(**policy))
    propose(session, task_run, states.Running())

    result = propose(session, task_run, states.Failed(state_details=details))

    assert (result.status, result.state.type, result.state.name) == (SetStateStatus.ACCEPT, StateType.FAILED, "Failed")


def test_retry_delay_is_chosen_by_run_count() -> None:
    listed = TaskRunPolicy(retries=5, retry_delay=[1, 2.5, 4])
    assert [retry_delay_seconds(listed, count) for count in (1, 2, 3, 4)] == [1, 2.5, 4, 4]
    assert retry_delay_seconds(TaskRunPolicy(retry_delay=7), 3) == 7
    assert retry_delay_seconds(TaskRunPolicy(retry_delay_seconds=3), 1) == 3  # the legacy field
    assert retry_delay_seconds(TaskRunPolicy(retry_delay=[]), 1) == 0
    assert retry_delay_seconds(TaskRunPolicy(retry_delay=0, retry_jitter_factor=2), 1) == 0


def test_clamped_poisson_interval_spans_exactly_its_window() -> None:
    lowest = clamped_poisson_interval(10, 0.5, uniform=lambda low, high: low)
    highest = clamped_poisson_interval(10, 0.5, uniform=lambda low, high: high)

    assert math.isclose(lowest, 10 * lower_bound_multiple(1.5))
    assert math.isclose(highest, 15)
    assert math.isclose(lower_bound_multiple(1.5), 0.6293968733822198)  # Prefect's lower clamp for 0.5
    assert clamped_poisson_interval(0, 0.5) == 0.0
    with pytest.raises(ValueError, match="clamping_factor"):
        clamped_poisson_interval(10, 0)


# -- RenameReruns and UpdateFlowRunTrackerOnTasks ----------------------------------------------


def test_first_start_is_running_and_records_the_flow_attempt(session: Session, flow_run: orm.FlowRun) -> None:
    task_run = task_run_in(session, flow_run)

    result = propose(session, task_run, states.Running())

    assert (result.status, result.state.name) == (SetStateStatus.ACCEPT, "Running")
    row = stored(session, task_run)
    assert (row.run_count, row.flow_run_run_count, row.start_time) == (1, 1, result.state.timestamp)


def test_start_after_awaiting_retry_is_named_retrying(session: Session, flow_run: orm.FlowRun) -> None:
    task_run = started(session, flow_run, states.AwaitingRetry(scheduled_time=past()))

    result = propose(session, task_run, states.Running())

    assert (result.status, result.state.name) == (SetStateStatus.ACCEPT, "Retrying")
    assert stored(session, task_run).run_count == 2


def test_another_start_of_a_run_that_ran_is_named_rerunning(session: Session, flow_run: orm.FlowRun) -> None:
    task_run = started(session, flow_run, states.Pending())

    result = propose(session, task_run, states.Running())

    assert (result.status, result.state.name) == (SetStateStatus.ACCEPT, "Rerunning")
    row = stored(session, task_run)
    assert (row.run_count, row.state_name) == (2, "Rerunning")
    assert history(session, task_run) == ["Pending", "Running", "Pending", "Rerunning"]


def test_start_records_the_flow_runs_current_attempt(session: Session, flow_run: orm.FlowRun) -> None:
    for state in (states.Failed(), states.Running(), states.Failed(), states.Running()):
        flow_runs.set_flow_run_state(session, flow_run.id, state, force=True)
        session.commit()
    task_run = task_run_in(session, flow_run)

    propose(session, task_run, states.Running())

    assert stored(session, task_run).flow_run_run_count == 3


# -- create ------------------------------------------------------------------------------------


def test_created_task_run_keeps_its_retry_policy_and_is_forced_into_its_state(
    session: Session, flow: orm.Flow
) -> None:
    pending_flow = flow_run_in(session, flow, states.Pending())
    policy = {"retries": 2, "retry_delay": [1, 5], "retry_jitter_factor": 0.2}

    row = task_runs.create_task_run(
        session,
        actions.TaskRunCreate(
            flow_run_id=pending_flow.id, task_key="k", dynamic_key=str(uuid.uuid4()),
            empirical_policy=policy, state=actions.StateCreate(type="RUNNING"),
        ),
    )
    session.commit()

    row = stored(session, row)
    assert row.empirical_policy == TaskRunPolicy(**policy)
    assert (row.state_type, row.run_count) == (StateType.RUNNING, 1)  # forced past the core rules
