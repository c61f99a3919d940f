"""Task-run states: the minimal policy writes them, the global transforms keep the run's books."""

import datetime
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import flow_runs, orm, task_runs
from models.errors import ObjectNotFoundError
from models.schemas import actions, states
from models.schemas.responses import SetStateStatus
from models.schemas.states import State, StateType
from models.types import now_utc
from orchestration import CoreFlowPolicy
from tests.fixtures import make_flow_run


@pytest.fixture
def running_flow_run(session: Session, flow: orm.Flow) -> orm.FlowRun:
    run = make_flow_run(session, flow)
    flow_runs.set_flow_run_state(session, run.id, states.Running(), force=True)
    session.commit()
    return run


@pytest.fixture
def task_run(session: Session, running_flow_run: orm.FlowRun) -> orm.TaskRun:
    row = task_runs.create_task_run(
        session, actions.TaskRunCreate(flow_run_id=running_flow_run.id, task_key="extract", dynamic_key="0")
    )
    session.commit()
    return row


def set_state(session: Session, task_run: orm.TaskRun, state: State) -> State:
    result = task_runs.set_task_run_state(session, task_run.id, state)
    session.commit()
    assert result.status == SetStateStatus.ACCEPT
    assert result.state is not None
    return result.state


def test_created_task_run_gets_its_initial_state(session: Session, running_flow_run: orm.FlowRun) -> None:
    row = task_runs.create_task_run(
        session,
        actions.TaskRunCreate(
            flow_run_id=running_flow_run.id,
            task_key="t",
            dynamic_key="0",
            state=actions.StateCreate(type="PENDING"),
        ),
    )
    session.commit()

    assert (row.state_type, row.state_name) == (StateType.PENDING, "Pending")
    assert row.state is not None and row.state.state_details.task_run_id == row.id
    assert row.state.state_details.flow_run_id == running_flow_run.id
    assert row.expected_start_time == row.state_timestamp


def test_running_task_run_starts_and_counts_but_a_forced_start_tracks_no_flow_attempt(
    session: Session, running_flow_run: orm.FlowRun, task_run: orm.TaskRun
) -> None:
    set_state(session, task_run, states.Pending())

    running = set_state(session, task_run, states.Running())

    assert task_run.start_time == running.timestamp
    assert task_run.run_count == 1
    # Tracking the flow attempt is a core-policy rule (tests/test_core_task_policy.py), as Prefect's.
    assert (running_flow_run.run_count, task_run.flow_run_run_count) == (1, 0)


def test_finished_task_run_has_end_time_and_run_time(session: Session, task_run: orm.TaskRun) -> None:
    running = set_state(session, task_run, states.Running())

    completed = set_state(session, task_run, states.Completed(data={"type": "reference", "key": "k"}))

    assert task_run.end_time == completed.timestamp
    assert task_run.total_run_time == completed.timestamp - running.timestamp > datetime.timedelta(0)
    assert completed.data == {"type": "reference", "key": "k"}


def test_retried_task_run_counts_each_attempt(session: Session, task_run: orm.TaskRun) -> None:
    set_state(session, task_run, states.Running())
    set_state(session, task_run, states.AwaitingRetry(scheduled_time=now_utc()))
    set_state(session, task_run, states.Running())

    assert task_run.run_count == 2
    assert task_run.next_scheduled_start_time is None


def test_scheduled_task_run_expects_to_start_at_its_scheduled_time(
    session: Session, task_run: orm.TaskRun
) -> None:
    when = now_utc() + datetime.timedelta(minutes=5)

    set_state(session, task_run, states.Scheduled(scheduled_time=when))

    assert task_run.expected_start_time == when
    assert task_run.next_scheduled_start_time == when


def test_task_run_history_is_ordered_as_written(session: Session, task_run: orm.TaskRun) -> None:
    written = [
        set_state(session, task_run, state()) for state in (states.Pending, states.Running, states.Completed)
    ]

    stored = (
        session.execute(
            sa.select(orm.TaskRunState.id)
            .where(orm.TaskRunState.task_run_id == task_run.id)
            .order_by(orm.TaskRunState.timestamp)
        )
        .scalars()
        .all()
    )
    assert stored == [state.id for state in written]
    assert task_run.state_id == written[-1].id


def test_unknown_task_run_is_not_found(session: Session) -> None:
    with pytest.raises(ObjectNotFoundError, match="task_run_id"):
        task_runs.set_task_run_state(session, uuid.uuid4(), states.Running())


def test_subflow_states_are_mirrored_on_its_parent_task_run(
    session: Session, flow: orm.Flow, running_flow_run: orm.FlowRun, task_run: orm.TaskRun
) -> None:
    subflow = make_flow_run(session, flow, parent_task_run_id=task_run.id)
    flow_runs.set_flow_run_state(session, subflow.id, states.Pending(), force=True)

    result = flow_runs.set_flow_run_state(session, subflow.id, states.Running(), flow_policy=CoreFlowPolicy)
    session.commit()

    assert result.state is not None and result.state.state_details.task_run_id == task_run.id
    assert task_run.state is not None
    assert (task_run.state_type, task_run.state.id != result.state.id) == (StateType.RUNNING, True)
    assert task_run.state.state_details.child_flow_run_id == subflow.id
    assert task_run.run_count == 1 and task_run.start_time is not None
