"""The `work_queues.*` tasks."""

from sqlalchemy.orm import Session

from models import work_queues
from models.schemas.actions import WorkQueueCreate
from models.schemas.base import ActionModel
from models.schemas.core import WorkQueue
from tasks.base import flowruns_task


class CreateWorkQueue(ActionModel):
    work_queue: WorkQueueCreate


@flowruns_task("work_queues.create_work_queue", CreateWorkQueue, recorded=True)
def create_work_queue(session: Session, body: CreateWorkQueue, task_id: str) -> WorkQueue:
    """Create the queue in the named pool (the default pool if none); an unknown pool is not found."""
    row = work_queues.create_work_queue(session, body.work_queue)
    return WorkQueue.model_validate(row).model_copy(update={"work_pool_name": row.work_pool.name})
