"""The `work_pools.*` tasks."""

from sqlalchemy.orm import Session

from models import work_pools
from models.job_variables import check_variable_defaults
from models.schemas.actions import WorkPoolCreate
from models.schemas.base import ActionModel
from models.schemas.core import WorkPool
from tasks.base import flowruns_task


class CreateWorkPool(ActionModel):
    work_pool: WorkPoolCreate


@flowruns_task("work_pools.create_work_pool", CreateWorkPool, recorded=True)
def create_work_pool(session: Session, body: CreateWorkPool, task_id: str) -> WorkPool:
    """Create the pool and its default queue; a taken or reserved (`prefect...`) name, or a base job
    template whose defaults do not satisfy its own variables schema, is a ValidationError."""
    work_pools.refuse_reserved_name(body.work_pool.name)
    check_variable_defaults(body.work_pool.base_job_template)
    return WorkPool.model_validate(work_pools.create_work_pool(session, body.work_pool))
