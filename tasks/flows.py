"""The `flows.*` tasks."""

from sqlalchemy.orm import Session

from models import flows
from models.schemas.actions import FlowCreate
from models.schemas.base import ActionModel
from models.schemas.core import Flow
from tasks.base import flowruns_task


class CreateFlow(ActionModel):
    flow: FlowCreate


@flowruns_task("flows.create_flow", CreateFlow, recorded=True)
def create_flow(session: Session, body: CreateFlow, task_id: str) -> Flow:
    """Create the flow, or return the existing flow of that name."""
    return Flow.model_validate(flows.create_flow(session, body.flow))
