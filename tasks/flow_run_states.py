"""The `flow_run_states.*` tasks."""

from sqlalchemy.orm import Session

from models import flow_run_states, flow_runs
from models.errors import ObjectNotFoundError
from models.schemas.states import State
from tasks.base import flowruns_task
from tasks.flow_runs import FlowRunId


@flowruns_task("flow_run_states.read_flow_run_states", FlowRunId, recorded=False)
def read_flow_run_states(session: Session, body: FlowRunId, task_id: str) -> list[State]:
    """The run's whole history, oldest first; an unknown run is not found."""
    if flow_runs.read_flow_run(session, body.flow_run_id) is None:
        raise ObjectNotFoundError(f"flow_run_id: no flow run with id {body.flow_run_id}")
    return [State.model_validate(row) for row in flow_run_states.read_flow_run_states(session, body.flow_run_id)]
