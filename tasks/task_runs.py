"""The `task_runs.*` tasks."""

import uuid

from sqlalchemy.orm import Session

from models import task_runs
from models.schemas.actions import StateCreate, TaskRunCreate
from models.schemas.base import ActionModel
from models.schemas.core import TaskRun
from models.schemas.states import StateType
from orchestration import CoreTaskPolicy, service
from orchestration.service import Inbox, Transition
from tasks.base import flowruns_task, transition_task


class CreateTaskRun(ActionModel):
    task_run: TaskRunCreate


class SetTaskRunState(ActionModel):
    task_run_id: uuid.UUID
    state: StateCreate
    force: bool = False


@flowruns_task("task_runs.create_task_run", CreateTaskRun, recorded=True)
def create_task_run(session: Session, body: CreateTaskRun, task_id: str) -> TaskRun:
    """Create the task run, or return the one with the same flow run, task key and dynamic key; a
    new one without a state starts PENDING (forced), as Prefect's API creates it."""
    task_run = body.task_run
    if task_run.state is None:
        task_run = task_run.model_copy(update={"state": StateCreate(type=StateType.PENDING)})
    return TaskRun.model_validate(task_runs.create_task_run(session, task_run))


@transition_task("task_runs.set_task_run_state", SetTaskRunState)
def set_task_run_state(session: Session, body: SetTaskRunState, inbox: Inbox) -> Transition:
    """Propose the state under Prefect's core task policy (the minimal one when `force`)."""
    return service.set_task_run_state(
        session, body.task_run_id, body.state, force=body.force, task_policy=CoreTaskPolicy, inbox=inbox
    )
