"""Each rule of the flow policies, one test per outcome, through `set_flow_run_state`."""

import datetime
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import concurrency_slots, deployments, flow_runs, orm, task_runs
from models.schemas import actions, states
from models.schemas.core import FlowRunPolicy
from models.schemas.responses import OrchestrationResult, SetStateStatus
from models.schemas.states import State, StateDetails, StateType
from models.settings import get_settings
from models.types import now_utc
from orchestration import CoreFlowPolicy, MarkLateRunsPolicy
from tests.fixtures import make_deployment, make_flow_run

PERSISTED = {"type": "reference", "storage_key": "s3://bucket/result"}


# -- helpers ----------------------------------------------------------------------------------


_LOCK_PATH = {"worker session": False}


@pytest.fixture(autouse=True, params=["session holding the run", "worker session"])
def lock_path(request: pytest.FixtureRequest) -> Any:
    """Every rule, through both ways a run is locked: the session already holds the run as an
    ORM instance (locked and refreshed through the ORM), or it does not, as in a worker (read
    with Core); `propose` then detaches the run around the call and reloads it afterwards."""
    _LOCK_PATH["worker session"] = request.param == "worker session"
    yield request.param
    _LOCK_PATH["worker session"] = False


def propose(session: Session, run: orm.FlowRun, state: State, **kwargs: Any) -> OrchestrationResult:
    kwargs.setdefault("flow_policy", CoreFlowPolicy)
    worker = _LOCK_PATH["worker session"] and run in session
    if worker:
        session.expunge(run)
    result = flow_runs.set_flow_run_state(session, run.id, state, **kwargs)
    session.commit()
    if worker:
        session.add(run)
        session.refresh(run)
    return result


def force(session: Session, run: orm.FlowRun, state: State) -> OrchestrationResult:
    return propose(session, run, state, force=True)


def run_in(session: Session, flow: orm.Flow, *initial: State, **fields: Any) -> orm.FlowRun:
    """A run forced through the given states."""
    run = make_flow_run(session, flow, **fields)
    for state in initial:
        force(session, run, state)
    return run


def limit_of(session: Session, deployment: orm.Deployment) -> orm.ConcurrencyLimit:
    limit = session.get(orm.ConcurrencyLimit, deployment.concurrency_limit_id, populate_existing=True)
    assert limit is not None
    return limit


def holders(session: Session, deployment: orm.Deployment) -> int:
    return session.execute(
        sa.select(sa.func.count())
        .select_from(orm.SlotHolding)
        .where(orm.SlotHolding.concurrency_limit_id == deployment.concurrency_limit_id)
    ).scalar_one()


def state_count(session: Session, run: orm.FlowRun) -> int:
    return session.execute(
        sa.select(sa.func.count()).select_from(orm.FlowRunState).where(orm.FlowRunState.flow_run_id == run.id)
    ).scalar_one()


def limited(
    session: Session, flow: orm.Flow, limit: int = 1, strategy: str = "ENQUEUE", **fields: Any
) -> orm.Deployment:
    return make_deployment(
        session,
        flow,
        name=f"limited-{uuid.uuid4().hex[:6]}",
        concurrency_limit=limit,
        concurrency_options={"collision_strategy": strategy},
        **fields,
    )


def fill(session: Session, flow: orm.Flow, deployment: orm.Deployment) -> orm.FlowRun:
    """Another run of the deployment that takes a slot."""
    other = run_in(session, flow, states.Scheduled(), deployment_id=deployment.id)
    assert propose(session, other, states.Pending()).status == SetStateStatus.ACCEPT
    return other


def past(seconds: float = 60) -> datetime.datetime:
    return now_utc() - datetime.timedelta(seconds=seconds)


def future(seconds: float = 3600) -> datetime.datetime:
    return now_utc() + datetime.timedelta(seconds=seconds)


# -- 1. PreserveDeploymentConcurrencyLeaseId ----------------------------------------------------


def test_lease_id_is_carried_forward_when_the_proposal_has_none(session: Session, flow: orm.Flow) -> None:
    lease = uuid.uuid4()
    run = run_in(
        session, flow, states.Running(state_details=StateDetails(deployment_concurrency_lease_id=lease))
    )

    result = propose(session, run, states.Completed())

    assert result.state.state_details.deployment_concurrency_lease_id == lease


def test_lease_id_given_by_the_proposal_is_kept(session: Session, flow: orm.Flow) -> None:
    run = run_in(
        session,
        flow,
        states.Running(state_details=StateDetails(deployment_concurrency_lease_id=uuid.uuid4())),
    )
    own = uuid.uuid4()

    result = force(
        session, run, states.Completed(state_details=StateDetails(deployment_concurrency_lease_id=own))
    )

    assert result.state.state_details.deployment_concurrency_lease_id == own


# -- 2. PreventDuplicateTransitions ------------------------------------------------------------


def test_transition_repeating_the_current_states_transition_id_is_rejected(
    session: Session, flow: orm.Flow
) -> None:
    run = run_in(session, flow, states.Pending())
    transition = StateDetails(transition_id=uuid.uuid4())
    first = propose(session, run, states.Running(state_details=transition))

    replay = propose(session, run, states.Running(state_details=transition))

    assert replay.status == SetStateStatus.REJECT
    assert replay.details.reason == "This run has already made this state transition."
    assert replay.state.id == first.state.id
    assert run.run_count == 1


def test_transition_id_used_earlier_in_history_is_rejected(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Pending())
    transition = StateDetails(transition_id=uuid.uuid4())
    propose(session, run, states.Running(state_details=transition))
    propose(session, run, states.Completed())

    late_replay = propose(session, run, states.Running(state_details=transition))

    assert late_replay.status == SetStateStatus.REJECT
    assert late_replay.state.type == StateType.COMPLETED
    assert state_count(session, run) == 3


def test_new_transition_id_is_accepted_and_stored_on_the_state_row(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Pending())
    transition_id = uuid.uuid4()

    result = propose(session, run, states.Running(state_details=StateDetails(transition_id=transition_id)))

    assert result.status == SetStateStatus.ACCEPT
    row = session.get(orm.FlowRunState, result.state.id)
    assert row is not None and row.transition_id == transition_id


def test_forced_replay_of_a_transition_id_is_rejected(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Pending())
    transition = StateDetails(transition_id=uuid.uuid4())
    force(session, run, states.Running(state_details=transition))
    force(session, run, states.Completed())

    replay = force(session, run, states.Running(state_details=transition))

    assert replay.status == SetStateStatus.REJECT
    assert state_count(session, run) == 3


# -- 3. HandleFlowTerminalStateTransitions ---------------------------------------------------


@pytest.mark.parametrize("proposed", [states.Cancelling, states.Paused, states.Crashed])
def test_terminal_run_cannot_be_cancelled_paused_or_crashed(
    session: Session, flow: orm.Flow, proposed: Any
) -> None:
    run = run_in(session, flow, states.Failed())

    result = propose(session, run, proposed())

    assert result.status == SetStateStatus.ABORT
    assert result.details.reason == "Run is already in terminal state FAILED."
    assert result.state.type == StateType.FAILED


def test_completed_run_with_persisted_result_cannot_rerun(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Completed(data=PERSISTED))

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.REJECT
    assert result.details.reason == "Run is already COMPLETED."
    assert result.state.data == PERSISTED


def test_persisted_completed_result_cannot_be_overwritten_without_one(
    session: Session, flow: orm.Flow
) -> None:
    run = run_in(session, flow, states.Completed(data=PERSISTED))

    result = propose(session, run, states.Completed(data={"type": "unpersisted"}))

    assert result.status == SetStateStatus.REJECT
    assert "persisted result" in result.details.reason


def test_completed_run_without_persisted_result_may_rerun_with_fresh_pause_bookkeeping(
    session: Session, flow: orm.Flow
) -> None:
    run = run_in(
        session,
        flow,
        states.Completed(data={"type": "unpersisted"}),
        empirical_policy=FlowRunPolicy(pause_keys={"k"}, resuming=True, retry_type="in_process"),
    )

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.ACCEPT
    policy = run.empirical_policy
    assert policy.pause_keys == set() and policy.resuming is False and policy.retry_type is None
    assert run.end_time is None


def test_terminal_run_without_deployment_cannot_be_rescheduled(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Failed())

    result = propose(session, run, states.Scheduled())

    assert result.status == SetStateStatus.ABORT
    assert result.details.reason == "Cannot reschedule a run without an associated deployment."


def test_terminal_deployment_run_is_rescheduled_for_a_rerun(
    session: Session, flow: orm.Flow, deployment: orm.Deployment
) -> None:
    run = run_in(session, flow, states.Failed(), deployment_id=deployment.id)

    result = propose(session, run, states.Scheduled())

    assert result.status == SetStateStatus.ACCEPT
    assert run.empirical_policy.retry_type == "reschedule"


def test_terminal_policy_reset_is_undone_when_a_later_rule_refuses(
    session: Session, flow: orm.Flow, deployment: orm.Deployment
) -> None:
    run = run_in(
        session,
        flow,
        states.Failed(),
        deployment_id=deployment.id,
        empirical_policy=FlowRunPolicy(pause_keys={"k"}),
    )

    result = propose(session, run, states.Scheduled(name="Late"))  # only scheduled runs go late

    assert result.status == SetStateStatus.REJECT
    assert run.empirical_policy.pause_keys == {"k"}


def test_terminal_to_terminal_keeps_the_first_end_time(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running(), states.Failed())
    first_end = run.end_time

    result = propose(session, run, states.Completed())

    assert result.status == SetStateStatus.ACCEPT
    assert run.end_time == first_end


# -- PreventResultDataLoss (minimal policy) ----------------------------------------------------


def test_forced_overwrite_of_persisted_result_is_rejected(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Completed(data=PERSISTED))

    result = force(session, run, states.Completed())

    assert result.status == SetStateStatus.REJECT
    assert result.state.data == PERSISTED


def test_forced_move_from_completed_to_failed_is_accepted(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Completed(data=PERSISTED))

    assert force(session, run, states.Failed()).status == SetStateStatus.ACCEPT


# -- 4. EnforceCancellingToCancelledTransition ---------------------------------------------


@pytest.mark.parametrize(
    "proposed", [states.Completed, states.Running, states.Cancelling, states.Failed, states.Pending]
)
def test_cancelling_run_only_becomes_cancelled(session: Session, flow: orm.Flow, proposed: Any) -> None:
    run = run_in(session, flow, states.Cancelling())

    result = propose(session, run, proposed())

    assert result.status == SetStateStatus.REJECT
    assert result.state.type == StateType.CANCELLING


def test_cancelling_run_becomes_cancelled(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Cancelling())

    assert propose(session, run, states.Cancelled()).status == SetStateStatus.ACCEPT


# -- 5. BypassCancellingFlowRunsWithNoInfra ------------------------------------------------


def test_scheduled_run_without_process_is_cancelled_directly(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Scheduled())

    result = propose(session, run, states.Cancelling())

    assert result.status == SetStateStatus.REJECT
    assert result.state.type == StateType.CANCELLED
    assert result.details.reason == "Scheduled flow run has no infrastructure to terminate."


def test_scheduled_run_with_a_process_goes_through_cancelling(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Scheduled(), infrastructure_pid="pid-1")

    assert propose(session, run, states.Cancelling()).state.type == StateType.CANCELLING


def test_resuming_run_is_cancelled_directly(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Scheduled(name="Resuming"), infrastructure_pid="pid-1")

    assert propose(session, run, states.Cancelling()).state.type == StateType.CANCELLED


def test_suspended_run_is_cancelled_directly(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Suspended(timeout_seconds=60))

    result = propose(session, run, states.Cancelling())

    assert result.state.type == StateType.CANCELLED
    assert result.details.reason == "Suspended flow run has no infrastructure to terminate."


def test_blocking_paused_run_goes_through_cancelling(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Paused(timeout_seconds=60))

    assert propose(session, run, states.Cancelling()).state.type == StateType.CANCELLING


def test_forced_cancelling_of_scheduled_run_is_cancelled_directly(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Scheduled())

    assert force(session, run, states.Cancelling()).state.type == StateType.CANCELLED


# -- 6. PreventPendingTransitions --------------------------------------------------------------


@pytest.mark.parametrize("current", [states.Pending, states.Running, states.Cancelled])
def test_second_submission_is_aborted(session: Session, flow: orm.Flow, current: Any) -> None:
    run = run_in(session, flow, current())

    result = propose(session, run, states.Pending())

    assert result.status == SetStateStatus.ABORT
    assert result.details.reason == (
        f"This run is in a {current().type.value} state and cannot transition to a PENDING state."
    )


def test_pending_run_moves_to_named_substate_keeping_its_details(session: Session, flow: orm.Flow) -> None:
    scheduled_time, lease = past(), uuid.uuid4()
    run = run_in(
        session,
        flow,
        states.Pending(
            state_details=StateDetails(scheduled_time=scheduled_time, deployment_concurrency_lease_id=lease)
        ),
    )

    result = propose(session, run, states.Submitting())

    assert result.status == SetStateStatus.ACCEPT
    assert result.state.state_details.scheduled_time == scheduled_time
    assert result.state.state_details.deployment_concurrency_lease_id == lease


def test_named_pending_run_cannot_go_back_to_plain_pending(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Submitting())

    assert propose(session, run, states.Pending()).status == SetStateStatus.ABORT


# -- 7, 8. Securing slots at submission and at PENDING -> RUNNING -----------------------------


def test_submission_takes_a_free_slot(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=2)
    run = run_in(session, flow, states.Scheduled(), deployment_id=deployment.id)

    result = propose(session, run, states.Pending())

    assert result.status == SetStateStatus.ACCEPT
    holding_id = concurrency_slots.holding_for(session, run.id, deployment.concurrency_limit_id)
    assert holding_id is not None
    assert result.state.state_details.deployment_concurrency_lease_id == holding_id
    assert limit_of(session, deployment).active_slots == 1


def test_submission_to_a_full_enqueue_deployment_waits_for_a_slot(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    fill(session, flow, deployment)
    run = run_in(session, flow, states.Scheduled(), deployment_id=deployment.id)
    before = now_utc()

    result = propose(session, run, states.Pending())

    assert result.status == SetStateStatus.REJECT
    assert result.details.reason == "Deployment concurrency limit reached."
    assert (result.state.type, result.state.name) == (StateType.SCHEDULED, "AwaitingConcurrencySlot")
    wait = datetime.timedelta(seconds=get_settings().concurrency_slot_wait_seconds)
    assert before + wait <= result.state.state_details.scheduled_time <= now_utc() + wait
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 1


def test_submission_to_a_full_cancel_new_deployment_cancels_the_run(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1, strategy="CANCEL_NEW")
    fill(session, flow, deployment)
    run = run_in(session, flow, states.Scheduled(), deployment_id=deployment.id)

    result = propose(session, run, states.Pending())

    assert result.status == SetStateStatus.REJECT
    assert result.state.type == StateType.CANCELLED
    assert result.state.message == "Deployment concurrency limit reached."


def test_submission_of_a_run_whose_deployment_is_gone_is_aborted(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow)
    run = run_in(session, flow, states.Scheduled(), deployment_id=deployment.id)
    deployments.delete_deployment(session, deployment.id)
    session.commit()

    result = propose(session, run, states.Pending())

    assert result.status == SetStateStatus.ABORT
    assert result.details.reason == "Deployment not found."


def test_submission_without_a_limit_takes_no_slot(
    session: Session, flow: orm.Flow, deployment: orm.Deployment
) -> None:
    run = run_in(session, flow, states.Scheduled(), deployment_id=deployment.id)

    result = propose(session, run, states.Pending())

    assert result.status == SetStateStatus.ACCEPT
    assert not concurrency_slots.holds_slot(session, run.id)


def test_submission_against_a_zero_limit_is_aborted(session: Session, flow: orm.Flow) -> None:
    zero = orm.ConcurrencyLimit(id=uuid.uuid4(), name="shared-zero", limit=0)
    session.add(zero)
    session.commit()
    deployment = make_deployment(session, flow, name="zero", global_concurrency_limit_id=zero.id)
    run = run_in(session, flow, states.Scheduled(), deployment_id=deployment.id)

    result = propose(session, run, states.Pending())

    assert result.status == SetStateStatus.ABORT
    assert "concurrency limit is 0" in result.details.reason


def test_inactive_limit_behaves_as_full(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=5)
    limit_of(session, deployment).active = False
    session.commit()
    run = run_in(session, flow, states.Scheduled(), deployment_id=deployment.id)

    result = propose(session, run, states.Pending())

    assert result.state.name == "AwaitingConcurrencySlot"


def test_workers_that_manage_concurrency_themselves_take_no_slot(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    run = run_in(session, flow, states.Scheduled(), deployment_id=deployment.id)

    result = propose(session, run, states.Pending(), client_version="3.0.2")

    assert result.status == SetStateStatus.ACCEPT
    assert holders(session, deployment) == 0


def test_slot_taken_for_an_overruled_submission_is_given_back(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    run = run_in(session, flow, states.Running(), states.Paused(), deployment_id=deployment.id)

    result = propose(session, run, states.Pending())  # PAUSED may not go to PENDING

    assert result.status == SetStateStatus.REJECT
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 0


def test_start_of_a_submitted_run_keeps_its_slot(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    run = run_in(session, flow, states.Scheduled(scheduled_time=past()), deployment_id=deployment.id)
    pending = propose(session, run, states.Pending())

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.ACCEPT
    lease = pending.state.state_details.deployment_concurrency_lease_id
    assert result.state.state_details.deployment_concurrency_lease_id == lease
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 1


def test_start_of_a_run_forced_to_pending_takes_a_slot(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    run = run_in(session, flow, states.Pending(), deployment_id=deployment.id)
    assert holders(session, deployment) == 0

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.ACCEPT
    assert concurrency_slots.holds_slot(session, run.id, deployment.concurrency_limit_id)
    assert limit_of(session, deployment).active_slots == 1


def test_start_of_a_run_forced_to_pending_without_a_free_slot_waits_in_line(
    session: Session, flow: orm.Flow
) -> None:
    """ENQUEUE never cancels: the run waits for a slot as AwaitingConcurrencySlot."""
    deployment = limited(session, flow, limit=1)
    fill(session, flow, deployment)
    run = run_in(session, flow, states.Pending(), deployment_id=deployment.id)

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.REJECT
    assert (result.state.type, result.state.name) == (StateType.SCHEDULED, "AwaitingConcurrencySlot")
    assert result.details.reason == "Deployment concurrency limit reached."
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 1


def test_start_of_a_run_forced_to_pending_on_a_full_cancel_new_deployment_is_cancelled(
    session: Session, flow: orm.Flow
) -> None:
    deployment = limited(session, flow, limit=1, strategy="CANCEL_NEW")
    fill(session, flow, deployment)
    run = run_in(session, flow, states.Pending(), deployment_id=deployment.id)

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.REJECT
    assert result.state.type == StateType.CANCELLED
    assert result.state.message == result.details.reason == "Deployment concurrency limit reached."
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 1


def test_slot_taken_for_an_early_start_is_given_back_when_told_to_wait(
    session: Session, flow: orm.Flow
) -> None:
    deployment = limited(session, flow, limit=1)
    run = run_in(
        session,
        flow,
        states.Pending(state_details=StateDetails(scheduled_time=future())),
        deployment_id=deployment.id,
    )

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.WAIT
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 0


# -- Re-acquiring at RUNNING from outside the active states ----------------------------------


def test_in_process_retry_keeps_its_slot_and_starts_while_others_wait(session: Session, flow: orm.Flow) -> None:
    """The retrying process is still alive: its slot is not given to a run waiting in line."""
    deployment = limited(session, flow, limit=1)
    run = run_in(
        session,
        flow,
        states.Scheduled(scheduled_time=past()),
        deployment_id=deployment.id,
        empirical_policy=FlowRunPolicy(retries=1),
    )
    propose(session, run, states.Pending())
    lease = propose(session, run, states.Running()).state.state_details.deployment_concurrency_lease_id
    assert propose(session, run, states.Failed()).state.name == "AwaitingRetry"
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 1
    waiting = run_in(session, flow, states.Scheduled(scheduled_time=past()), deployment_id=deployment.id)
    assert propose(session, waiting, states.Pending()).state.name == "AwaitingConcurrencySlot"

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.ACCEPT
    holding_id = concurrency_slots.holding_for(session, run.id, deployment.concurrency_limit_id)
    assert result.state.state_details.deployment_concurrency_lease_id == holding_id == lease is not None
    assert limit_of(session, deployment).active_slots == 1
    assert propose(session, waiting, states.Pending()).state.name == "AwaitingConcurrencySlot"


def test_in_process_retry_waits_when_its_slot_was_taken(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    run = run_in(
        session,
        flow,
        states.Scheduled(name="AwaitingRetry", scheduled_time=past()),
        deployment_id=deployment.id,
    )
    fill(session, flow, deployment)

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.REJECT
    assert result.state.name == "AwaitingConcurrencySlot"
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 1


def test_resume_on_a_full_cancel_new_deployment_cancels_the_run(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1, strategy="CANCEL_NEW")
    run = run_in(
        session, flow, states.Running(), states.Paused(timeout_seconds=300), deployment_id=deployment.id
    )
    fill(session, flow, deployment)

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.REJECT
    assert result.state.type == StateType.CANCELLED


def test_start_of_a_run_without_deployment_takes_no_slot(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Scheduled(scheduled_time=past()))

    assert propose(session, run, states.Running()).status == SetStateStatus.ACCEPT
    assert not concurrency_slots.holds_slot(session, run.id)


def test_slot_taken_for_an_expired_resume_is_given_back(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    run = run_in(
        session,
        flow,
        states.Running(),
        states.Paused(pause_expiration_time=past()),
        deployment_id=deployment.id,
    )

    result = propose(session, run, states.Running())

    assert result.state.type == StateType.FAILED
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 0


# -- 17. ReleaseFlowConcurrencySlots ------------------------------------------------------------


def started(session: Session, flow: orm.Flow, deployment: orm.Deployment, **fields: Any) -> orm.FlowRun:
    run = run_in(
        session, flow, states.Scheduled(scheduled_time=past()), deployment_id=deployment.id, **fields
    )
    assert propose(session, run, states.Pending()).status == SetStateStatus.ACCEPT
    assert propose(session, run, states.Running()).status == SetStateStatus.ACCEPT
    return run


@pytest.mark.parametrize(
    "proposed", [states.Completed, states.Failed, states.Crashed, lambda: states.Suspended(timeout_seconds=60)]
)
def test_leaving_for_a_state_without_a_live_process_gives_the_slot_back(
    session: Session, flow: orm.Flow, proposed: Any
) -> None:
    deployment = limited(session, flow, limit=1)
    run = started(session, flow, deployment)

    assert propose(session, run, proposed()).status == SetStateStatus.ACCEPT

    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 0


def test_failure_rejected_into_a_retry_keeps_the_slot(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    run = started(session, flow, deployment, empirical_policy=FlowRunPolicy(retries=2))

    assert propose(session, run, states.Failed()).state.name == "AwaitingRetry"

    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 1


def test_a_blocking_pause_keeps_the_slot_and_its_resume_is_never_bounced(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    run = started(session, flow, deployment)
    assert propose(session, run, states.Paused(timeout_seconds=300)).status == SetStateStatus.ACCEPT
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 1
    waiting = run_in(session, flow, states.Scheduled(scheduled_time=past()), deployment_id=deployment.id)
    assert propose(session, waiting, states.Pending()).state.name == "AwaitingConcurrencySlot"

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.ACCEPT
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 1
    assert not concurrency_slots.holds_slot(session, waiting.id)


def test_a_blocking_pause_that_times_out_fails_and_gives_the_slot_back(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    run = started(session, flow, deployment)
    propose(session, run, states.Paused(pause_expiration_time=past(1)))
    assert holders(session, deployment) == 1

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.REJECT and result.state.type == StateType.FAILED
    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 0


@pytest.mark.parametrize("rescheduled", [states.Scheduled, lambda: states.Scheduled(name="AwaitingConcurrencySlot")])
def test_a_blocking_pause_rescheduled_gives_the_slot_back(session: Session, flow: orm.Flow, rescheduled: Any) -> None:
    deployment = limited(session, flow, limit=1)
    run = started(session, flow, deployment)
    propose(session, run, states.Paused(timeout_seconds=300))

    assert propose(session, run, rescheduled()).status == SetStateStatus.ACCEPT

    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 0


def test_cancelling_keeps_the_slot_until_cancelled(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    run = started(session, flow, deployment)

    propose(session, run, states.Cancelling())
    assert holders(session, deployment) == 1
    propose(session, run, states.Cancelled())

    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 0


def test_forced_exit_from_the_active_states_gives_the_slot_back(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    run = started(session, flow, deployment)

    force(session, run, states.Scheduled())

    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 0


def test_run_that_never_took_a_slot_gives_none_back(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    fill(session, flow, deployment)
    run = run_in(session, flow, states.Pending(), deployment_id=deployment.id)  # forced: no slot

    force(session, run, states.Completed())

    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 1


def test_exit_after_cleanup_releases_nothing_more(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=2)
    other = fill(session, flow, deployment)
    run = started(session, flow, deployment)
    flow_runs.cleanup_flow_run_concurrency_slots(session, run)
    session.commit()

    propose(session, run, states.Completed())

    assert limit_of(session, deployment).active_slots == holders(session, deployment) == 1
    assert concurrency_slots.holds_slot(session, other.id)


# -- 10. EnsureOnlyScheduledFlowsMarkedLate ------------------------------------------------


def test_only_scheduled_runs_are_marked_late(
    session: Session, flow: orm.Flow, deployment: orm.Deployment
) -> None:
    run = run_in(session, flow, states.Pending(), deployment_id=deployment.id)

    result = propose(session, run, states.Late())

    assert result.status == SetStateStatus.REJECT
    assert result.details.reason == "Only scheduled flows can be marked late."


def test_late_run_is_not_marked_late_again(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Late(scheduled_time=past()))

    result = propose(session, run, states.Late(), flow_policy=MarkLateRunsPolicy)

    assert result.status == SetStateStatus.REJECT
    assert result.details.reason == "This flow run is already marked late."


def test_scheduled_run_is_marked_late(session: Session, flow: orm.Flow) -> None:
    scheduled_time = past()
    run = run_in(session, flow, states.Scheduled(scheduled_time=scheduled_time))

    result = propose(session, run, states.Late(scheduled_time=scheduled_time), flow_policy=MarkLateRunsPolicy)

    assert result.status == SetStateStatus.ACCEPT
    assert run.state_name == "Late" and run.next_scheduled_start_time == scheduled_time


# -- MarkLateRunsPolicy: EnforceDeploymentConcurrencyOnLate ----------------------------------


def test_run_going_late_on_a_full_cancel_new_deployment_is_cancelled(
    session: Session, flow: orm.Flow
) -> None:
    deployment = limited(session, flow, limit=1, strategy="CANCEL_NEW")
    fill(session, flow, deployment)
    run = run_in(session, flow, states.Scheduled(scheduled_time=past()), deployment_id=deployment.id)

    result = propose(session, run, states.Late(), flow_policy=MarkLateRunsPolicy)

    assert result.status == SetStateStatus.REJECT
    assert result.state.type == StateType.CANCELLED


def test_run_going_late_on_a_full_enqueue_deployment_is_marked_late(session: Session, flow: orm.Flow) -> None:
    deployment = limited(session, flow, limit=1)
    fill(session, flow, deployment)
    run = run_in(session, flow, states.Scheduled(scheduled_time=past()), deployment_id=deployment.id)

    assert propose(session, run, states.Late(), flow_policy=MarkLateRunsPolicy).state.name == "Late"


# -- 11. HandlePausingFlows ------------------------------------------------------------------


def test_run_without_state_cannot_pause(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow)

    result = propose(session, run, states.Paused())

    assert result.status == SetStateStatus.ABORT
    assert result.details.reason == "Cannot pause flows with no state."
    assert result.state is None


def test_run_that_is_not_running_cannot_pause(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Pending())

    result = propose(session, run, states.Suspended())

    assert result.status == SetStateStatus.REJECT
    assert result.details.reason == "Cannot suspend flows that are not currently running."


def test_pause_key_fires_once(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running(), empirical_policy=FlowRunPolicy(pause_keys={"k"}))

    result = propose(session, run, states.Paused(pause_key="k"))

    assert result.status == SetStateStatus.REJECT
    assert result.details.reason == "This pause has already fired."


def test_subflow_cannot_suspend(session: Session, flow: orm.Flow, deployment: orm.Deployment) -> None:
    parent = run_in(session, flow, states.Running())
    task = task_runs.create_task_run(
        session, actions.TaskRunCreate(flow_run_id=parent.id, task_key="t", dynamic_key="0")
    )
    session.commit()
    run = run_in(session, flow, states.Running(), deployment_id=deployment.id, parent_task_run_id=task.id)

    result = propose(session, run, states.Suspended())

    assert result.status == SetStateStatus.ABORT
    assert result.details.reason == "Cannot suspend subflows."


def test_run_without_deployment_cannot_suspend(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running())

    result = propose(session, run, states.Suspended())

    assert result.status == SetStateStatus.ABORT
    assert result.details.reason == "Cannot suspend flows without a deployment."


def test_running_run_pauses_and_records_its_key(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running())

    result = propose(session, run, states.Paused(pause_key="approve"))

    assert result.status == SetStateStatus.ACCEPT
    assert run.empirical_policy.pause_keys == {"approve"}


# -- 12. HandleResumingPausedFlows -----------------------------------------------------------


def test_paused_run_cannot_be_submitted(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running(), states.Paused())

    result = propose(session, run, states.Pending())

    assert result.status == SetStateStatus.REJECT
    assert result.details.reason == "This run cannot transition to the StateType.PENDING state from the StateType.PAUSED state."


def test_suspended_run_without_deployment_cannot_be_rescheduled(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running(), states.Suspended())

    result = propose(session, run, states.Scheduled(name="Resuming"))

    assert result.status == SetStateStatus.REJECT
    assert result.details.reason == "Cannot reschedule a resuming flow run without a deployment."


def test_expired_pause_fails_instead_of_resuming(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running(), states.Paused(pause_expiration_time=past()))

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.REJECT
    assert result.state.type == StateType.FAILED
    assert result.state.message == "The flow was running and never resumed."
    assert result.details.reason == "The flow run pause has timed out and can no longer resume."


def test_expired_pause_can_still_be_cancelled(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running(), states.Paused(pause_expiration_time=past()))

    assert propose(session, run, states.Cancelling()).state.type == StateType.CANCELLING


def test_resumed_run_is_marked_resuming(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running(), states.Paused(timeout_seconds=60))

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.ACCEPT
    assert run.empirical_policy.resuming is True


def test_blocking_pause_rescheduled_starts_a_fresh_attempt(
    session: Session, flow: orm.Flow, deployment: orm.Deployment
) -> None:
    run = run_in(
        session,
        flow,
        states.Running(),
        states.Paused(timeout_seconds=60),
        deployment_id=deployment.id,
        empirical_policy=FlowRunPolicy(pause_keys={"k"}),
    )

    propose(session, run, states.Scheduled())

    policy = run.empirical_policy
    assert policy.pause_keys == set() and policy.resuming is False and policy.retry_type == "reschedule"


# -- 13. CopyScheduledTime, 14. WaitForScheduledTime -----------------------------------------


def test_submitted_run_keeps_its_scheduled_time(session: Session, flow: orm.Flow) -> None:
    scheduled_time = past(30)
    run = run_in(session, flow, states.Scheduled(scheduled_time=scheduled_time))

    assert propose(session, run, states.Pending()).state.state_details.scheduled_time == scheduled_time


def test_submission_with_its_own_scheduled_time_keeps_it(session: Session, flow: orm.Flow) -> None:
    own = past(5)
    run = run_in(session, flow, states.Scheduled(scheduled_time=past(30)))

    result = propose(session, run, states.Pending(state_details=StateDetails(scheduled_time=own)))

    assert result.state.state_details.scheduled_time == own


def test_start_before_the_scheduled_time_waits(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Scheduled(scheduled_time=future(10)))

    result = propose(session, run, states.Running())

    assert result.status == SetStateStatus.WAIT
    assert result.details.reason == "Scheduled time is in the future"
    assert 9 <= result.details.delay_seconds <= 10


def test_start_after_the_scheduled_time_is_accepted(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Scheduled(scheduled_time=past()))

    assert propose(session, run, states.Running()).status == SetStateStatus.ACCEPT


# -- 15. RetryFailedFlows --------------------------------------------------------------------


def test_failure_with_retries_left_is_rescheduled_after_the_delay(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running(), empirical_policy=FlowRunPolicy(retries=2, retry_delay=30))
    before = now_utc()

    result = propose(session, run, states.Failed(message="boom", data={"error": "x"}))

    assert result.status == SetStateStatus.REJECT
    assert result.details.reason == "Retrying"
    retry = result.state
    assert (retry.type, retry.name, retry.message, retry.data) == (
        StateType.SCHEDULED,
        "AwaitingRetry",
        "boom",
        {"error": "x"},
    )
    assert before + datetime.timedelta(seconds=30) <= retry.state_details.scheduled_time
    assert run.empirical_policy.retry_type == "in_process"


def test_failure_without_retries_stands(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running())

    result = propose(session, run, states.Failed())

    assert result.status == SetStateStatus.ACCEPT
    assert result.state.type == StateType.FAILED


def test_failure_after_the_last_retry_stands(session: Session, flow: orm.Flow) -> None:
    run = run_in(
        session,
        flow,
        states.Running(),
        states.Scheduled(name="AwaitingRetry"),
        states.Running(),
        empirical_policy=FlowRunPolicy(retries=1),
    )
    assert run.run_count == 2

    result = propose(session, run, states.Failed())

    assert result.state.type == StateType.FAILED


def test_retry_for_legacy_clients_reschedules_failed_task_runs(session: Session, flow: orm.Flow) -> None:
    run = run_in(session, flow, states.Running(), empirical_policy=FlowRunPolicy(retries=1))
    task = task_runs.create_task_run(
        session,
        actions.TaskRunCreate(
            flow_run_id=run.id, task_key="t", dynamic_key="0", state=actions.StateCreate(type="RUNNING")
        ),
    )
    task_runs.set_task_run_state(session, task.id, states.Failed(), force=True)
    session.commit()

    propose(session, run, states.Failed(), orchestration_parameters={"api-version": "0.8.2"})

    assert task.state_type == StateType.SCHEDULED and task.state_name == "AwaitingRetry"
    assert task.run_count == 0
