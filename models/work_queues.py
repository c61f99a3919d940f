"""Work queues, always inside a pool (the default pool when none is named)."""

import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import orm
from models.errors import ObjectNotFoundError, ValidationError
from models.schemas.actions import WorkQueueCreate
from models.work_pools import DEFAULT_POOL_NAME, get_or_create_default_pool, read_work_pool_by_name


def create_work_queue(session: Session, work_queue: WorkQueueCreate) -> orm.WorkQueue:
    """Create a queue in the named pool (default pool if none); priority defaults to last."""
    pool = _resolve_pool(session, work_queue.work_pool_name)
    priority = work_queue.priority
    if priority is None:
        highest = session.execute(
            sa.select(sa.func.max(orm.WorkQueue.priority)).where(orm.WorkQueue.work_pool_id == pool.id)
        ).scalar()
        priority = (highest or 0) + 1
    queue = orm.WorkQueue(
        **work_queue.model_dump(exclude={"work_pool_name", "priority"}),
        priority=priority,
        work_pool_id=pool.id,
    )
    try:
        with session.begin_nested():
            session.add(queue)
            session.flush()
    except IntegrityError:
        raise ValidationError(
            f"work_queue.name: pool {pool.name!r} already has a queue named {work_queue.name!r}"
        ) from None
    return queue


def read_work_queue(session: Session, work_queue_id: uuid.UUID) -> orm.WorkQueue | None:
    return session.get(orm.WorkQueue, work_queue_id)


def read_work_queue_by_name(
    session: Session, name: str, work_pool_name: str | None = None
) -> orm.WorkQueue | None:
    return session.execute(
        sa.select(orm.WorkQueue)
        .join(orm.WorkPool, orm.WorkPool.id == orm.WorkQueue.work_pool_id)
        .where(orm.WorkQueue.name == name, orm.WorkPool.name == (work_pool_name or DEFAULT_POOL_NAME))
    ).scalar_one_or_none()


def resolve_work_queue(
    session: Session, work_pool_name: str | None, work_queue_name: str | None
) -> orm.WorkQueue | None:
    """The queue named by pool and/or queue name: a pool alone means its default queue,
    a queue alone means that queue in the default pool. Unknown names are not found."""
    if work_pool_name is None and work_queue_name is None:
        return None
    if work_queue_name is None:
        pool = read_work_pool_by_name(session, work_pool_name or "")
        if pool is None:
            raise ObjectNotFoundError(f"work_pool_name: no work pool named {work_pool_name!r}")
        queue = session.get(orm.WorkQueue, pool.default_queue_id) if pool.default_queue_id else None
        if queue is None:
            raise ObjectNotFoundError(f"work_pool_name: work pool {work_pool_name!r} has no default queue")
        return queue
    if work_pool_name is not None and read_work_pool_by_name(session, work_pool_name) is None:
        raise ObjectNotFoundError(f"work_pool_name: no work pool named {work_pool_name!r}")
    queue = read_work_queue_by_name(session, work_queue_name, work_pool_name)
    if queue is None:
        pool = work_pool_name or DEFAULT_POOL_NAME
        raise ObjectNotFoundError(f"work_queue_name: no work queue named {work_queue_name!r} in pool {pool!r}")
    return queue


def _resolve_pool(session: Session, work_pool_name: str | None) -> orm.WorkPool:
    if work_pool_name is None or work_pool_name == DEFAULT_POOL_NAME:
        return get_or_create_default_pool(session)
    pool = read_work_pool_by_name(session, work_pool_name)
    if pool is None:
        raise ObjectNotFoundError(f"work_pool_name: no work pool named {work_pool_name!r}")
    return pool
