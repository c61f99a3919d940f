"""The `deployments.*` tasks."""

import uuid

from sqlalchemy.orm import Session

from models import deployments
from models.errors import ObjectNotFoundError
from models.schemas.actions import DeploymentCreate
from models.schemas.base import ActionModel
from models.schemas.core import Deployment
from tasks.base import flowruns_task


class CreateDeployment(ActionModel):
    deployment: DeploymentCreate


class DeploymentId(ActionModel):
    deployment_id: uuid.UUID


@flowruns_task("deployments.create_deployment", CreateDeployment, recorded=True)
def create_deployment(session: Session, body: CreateDeployment, task_id: str) -> Deployment:
    """Create the deployment (or update the one of the same flow and name)."""
    return Deployment.model_validate(deployments.create_deployment(session, body.deployment))


@flowruns_task("deployments.read_deployment", DeploymentId, recorded=False)
def read_deployment(session: Session, body: DeploymentId, task_id: str) -> Deployment:
    """The deployment with its `concurrency_limit` and `global_concurrency_limit` (limit, active slots)."""
    row = deployments.read_deployment(session, body.deployment_id)
    if row is None:
        raise ObjectNotFoundError(f"deployment_id: no deployment with id {body.deployment_id}")
    return Deployment.model_validate(row)
