"""What beat's monitors do to one run, as Prefect's background services do it, each in the
caller's transaction: fail a pause that timed out, cancel a task run of a cancelled run, cancel
a subflow whose containing run was cancelled, cancel a run left CANCELLING too long.

Each first locks the run's row and checks again what the selection saw (`models.run_monitors`),
so a run that moved on meanwhile is left alone, and no transition slips in between the check and
the write. Each returns whether the state it proposed was accepted.
"""

import datetime
import uuid

from sqlalchemy.orm import Session

from models import flow_runs, run_monitors, task_runs
from models.schemas.responses import SetStateStatus
from models.schemas.states import TERMINAL_STATES, Cancelled, Cancelling, Failed, StateType
from orchestration.policies import CoreFlowPolicy

PAUSE_EXPIRED_MESSAGE = "The flow was paused and never resumed."
PARENT_CANCELLED_MESSAGE = "The parent flow run was cancelled."
CANCELLING_TIMED_OUT_MESSAGE = "Flow run cancellation timed out; marked this flow run as Cancelled."


def fail_expired_pause(session: Session, flow_run_id: uuid.UUID, now: datetime.datetime) -> bool:
    """A run still PAUSED past its pause timeout is failed (forced: nothing can resume it)."""
    run = run_monitors.lock_flow_run(session, flow_run_id)
    if run is None or run.state_type != StateType.PAUSED:
        return False
    if not run_monitors.pause_has_expired(run.state_details, now):
        return False
    result = flow_runs.set_flow_run_state(session, flow_run_id, Failed(message=PAUSE_EXPIRED_MESSAGE), force=True)
    return result.status == SetStateStatus.ACCEPT


def cancel_task_run_of_cancelled_run(session: Session, task_run_id: uuid.UUID) -> bool:
    """A task run still unfinished whose flow run was cancelled is cancelled (forced)."""
    task_run = run_monitors.lock_task_run(session, task_run_id)
    if task_run is None or task_run.state_type in TERMINAL_STATES:
        return False
    result = task_runs.set_task_run_state(session, task_run_id, Cancelled(message=PARENT_CANCELLED_MESSAGE), force=True)
    return result.status == SetStateStatus.ACCEPT


def cancel_orphaned_subflow(session: Session, flow_run_id: uuid.UUID) -> bool:
    """An unfinished subflow whose containing run is CANCELLED, stateless or gone is cancelled
    under the minimal policy: a deployment's subflow goes to Cancelling (its infrastructure must
    be told), any other straight to Cancelled."""
    run = run_monitors.lock_flow_run(session, flow_run_id)
    if run is None or run.parent_task_run_id is None or run.state_type not in run_monitors.SUBFLOW_STATES:
        return False
    parent_exists, containing_state = run_monitors.containing_run_state_type(session, run.parent_task_run_id)
    if not parent_exists or containing_state not in (None, StateType.CANCELLED):
        return False
    if run.deployment_id is not None:
        if run.state_type == StateType.CANCELLING:
            return False
        state = Cancelling(message=PARENT_CANCELLED_MESSAGE)
    else:
        state = Cancelled(message=PARENT_CANCELLED_MESSAGE)
    return flow_runs.set_flow_run_state(session, flow_run_id, state).status == SetStateStatus.ACCEPT


def time_out_cancelling_run(session: Session, flow_run_id: uuid.UUID, entered_before: datetime.datetime) -> bool:
    """A run still CANCELLING since before `entered_before` is marked Cancelled under the core
    policy (its infrastructure never reported back)."""
    run = run_monitors.lock_flow_run(session, flow_run_id)
    if run is None or run.state_type != StateType.CANCELLING:
        return False
    if run.state_timestamp is None or run.state_timestamp >= entered_before:
        return False
    result = flow_runs.set_flow_run_state(
        session, flow_run_id, Cancelled(message=CANCELLING_TIMED_OUT_MESSAGE), flow_policy=CoreFlowPolicy
    )
    return result.status == SetStateStatus.ACCEPT
