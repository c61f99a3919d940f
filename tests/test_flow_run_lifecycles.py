"""Whole life cycles of flow runs under the core policy, as a worker and an engine drive them."""

import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import flow_runs, orm
from models.schemas import states
from models.schemas.core import FlowRunPolicy
from models.schemas.responses import OrchestrationResult, SetStateStatus
from models.schemas.states import State, StateType
from models.types import now_utc
from orchestration import CoreFlowPolicy
from tests.fixtures import make_deployment, make_flow_run


def propose(session: Session, run: orm.FlowRun, state: State, **kwargs: Any) -> OrchestrationResult:
    result = flow_runs.set_flow_run_state(session, run.id, state, flow_policy=CoreFlowPolicy, **kwargs)
    session.commit()
    return result


def force(session: Session, run: orm.FlowRun, state: State) -> OrchestrationResult:
    result = flow_runs.set_flow_run_state(session, run.id, state, force=True)
    session.commit()
    return result


def history(session: Session, run: orm.FlowRun) -> list[orm.FlowRunState]:
    return list(
        session.execute(
            sa.select(orm.FlowRunState)
            .where(orm.FlowRunState.flow_run_id == run.id)
            .order_by(orm.FlowRunState.timestamp)
        ).scalars()
    )


def past(seconds: float = 60) -> datetime.datetime:
    return now_utc() - datetime.timedelta(seconds=seconds)


def test_run_that_fails_once_retries_and_completes(session: Session, flow: orm.Flow) -> None:
    deployment = make_deployment(session, flow)
    run = make_flow_run(
        session, flow, deployment_id=deployment.id, empirical_policy=FlowRunPolicy(retries=1, retry_delay=0)
    )
    force(session, run, states.Scheduled(scheduled_time=past()))

    assert propose(session, run, states.Pending()).status == SetStateStatus.ACCEPT
    first_start = propose(session, run, states.Running())
    assert first_start.status == SetStateStatus.ACCEPT
    assert run.run_count == 1
    assert run.start_time == first_start.state.timestamp

    retry = propose(session, run, states.Failed(message="boom", data={"type": "unpersisted"}))
    assert retry.status == SetStateStatus.REJECT
    assert retry.state.type == StateType.SCHEDULED and retry.state.name == "AwaitingRetry"
    assert retry.state.message == "boom"
    assert run.empirical_policy.retry_type == "in_process"
    assert run.end_time is None

    second_start = propose(session, run, states.Running())
    assert second_start.status == SetStateStatus.ACCEPT
    assert run.run_count == 2
    assert run.start_time == first_start.state.timestamp  # the first start stays

    done = propose(session, run, states.Completed())
    assert done.status == SetStateStatus.ACCEPT
    assert run.state_type == StateType.COMPLETED and run.state_name == "Completed"
    assert run.end_time == done.state.timestamp
    expected_run_time = (retry.state.timestamp - first_start.state.timestamp) + (
        done.state.timestamp - second_start.state.timestamp
    )
    assert run.total_run_time == expected_run_time
    assert [s.name for s in history(session, run)] == [
        "Scheduled",
        "Pending",
        "Running",
        "AwaitingRetry",
        "Running",
        "Completed",
    ]


def test_run_out_of_retries_fails(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow, empirical_policy=FlowRunPolicy(retries=1))
    force(session, run, states.Pending())
    propose(session, run, states.Running())
    assert propose(session, run, states.Failed()).state.name == "AwaitingRetry"
    propose(session, run, states.Running())

    final = propose(session, run, states.Failed(message="again"))

    assert final.status == SetStateStatus.ACCEPT
    assert final.state.type == StateType.FAILED
    assert run.run_count == 2
    assert run.empirical_policy.retry_type is None


def test_paused_run_resumes_without_counting_a_new_attempt_after_reschedule(
    session: Session, flow: orm.Flow
) -> None:
    deployment = make_deployment(session, flow)
    run = make_flow_run(session, flow, deployment_id=deployment.id)
    force(session, run, states.Pending())
    propose(session, run, states.Running())

    paused = propose(session, run, states.Suspended(timeout_seconds=300, pause_key="approval"))
    assert paused.status == SetStateStatus.ACCEPT
    assert run.empirical_policy.pause_keys == {"approval"}

    resuming = propose(session, run, states.Scheduled(name="Resuming", scheduled_time=now_utc()))
    assert resuming.status == SetStateStatus.ACCEPT
    assert run.empirical_policy.resuming is True

    propose(session, run, states.Pending())
    assert propose(session, run, states.Running()).status == SetStateStatus.ACCEPT
    assert run.run_count == 1  # resuming is not a new attempt
    assert run.empirical_policy.resuming is False

    repeat = propose(session, run, states.Suspended(timeout_seconds=300, pause_key="approval"))
    assert repeat.status == SetStateStatus.REJECT  # that pause already fired
    assert propose(session, run, states.Completed()).status == SetStateStatus.ACCEPT


def test_blocking_pause_resumes_straight_to_running(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow)
    force(session, run, states.Running())
    run_time_before_pause = propose(session, run, states.Paused(timeout_seconds=300)).state.timestamp

    resumed = propose(session, run, states.Running())

    assert resumed.status == SetStateStatus.ACCEPT
    assert run.empirical_policy.resuming is True
    assert run.total_run_time > datetime.timedelta(0)
    assert run.state_timestamp > run_time_before_pause


def test_cancelling_run_ends_cancelled(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow)
    force(session, run, states.Running())

    assert propose(session, run, states.Cancelling()).status == SetStateStatus.ACCEPT
    assert propose(session, run, states.Completed()).status == SetStateStatus.REJECT
    cancelled = propose(session, run, states.Cancelled())

    assert cancelled.status == SetStateStatus.ACCEPT
    assert run.state_type == StateType.CANCELLED
    assert run.end_time == cancelled.state.timestamp


def test_early_run_waits_for_its_scheduled_time(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow)
    force(session, run, states.Scheduled(scheduled_time=now_utc() + datetime.timedelta(seconds=90)))
    assert propose(session, run, states.Pending()).status == SetStateStatus.ACCEPT

    early = propose(session, run, states.Running())

    assert early.status == SetStateStatus.WAIT
    assert 85 <= early.details.delay_seconds <= 90
    assert early.state.type == StateType.PENDING  # nothing written
    assert run.run_count == 0 and run.start_time is None
    assert len(history(session, run)) == 2


def test_run_that_never_started_gets_start_and_end_time_when_it_ends(
    session: Session, flow: orm.Flow
) -> None:
    run = make_flow_run(session, flow)
    force(session, run, states.Scheduled())

    crashed = propose(session, run, states.Crashed())

    assert run.start_time == run.end_time == crashed.state.timestamp
    assert run.total_run_time == datetime.timedelta(0)


def test_history_is_ordered_as_written(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow)
    stale = states.Running(timestamp=past(3600))  # a caller-minted timestamp is not trusted
    force(session, run, states.Pending())

    running = propose(session, run, stale)
    completed = propose(session, run, states.Completed())

    assert running.state.timestamp > history(session, run)[0].timestamp
    assert [s.id for s in history(session, run)][-2:] == [running.state.id, completed.state.id]
    assert run.total_run_time >= datetime.timedelta(0)
