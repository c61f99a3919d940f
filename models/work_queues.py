"""Work queues, always inside a pool (the default pool when none is named)."""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import orm
from models.errors import ObjectNotFoundError, ValidationError
from models.schemas.actions import WorkQueueCreate
from models.work_pools import (
    DEFAULT_POOL_NAME,
    DEFAULT_QUEUE_NAME,
    get_or_create_default_pool,
    read_work_pool_by_name,
)


def create_work_queue(session: Session, work_queue: WorkQueueCreate) -> orm.WorkQueue:
    """Create a queue in the named pool (the default pool if none, created if missing). Without a
    priority it takes the first one free in its pool; with one, it gets it, and the pool's queues
    from that priority on move down as little as keeps every priority distinct, in their order.
    Asking for `default` in a default pool this call created answers with the queue the pool was
    created with."""
    pool, pool_created = _resolve_pool(session, work_queue.work_pool_name)
    if pool_created and work_queue.name == DEFAULT_QUEUE_NAME and pool.default_queue_id is not None:
        default_queue = session.get(orm.WorkQueue, pool.default_queue_id)
        assert default_queue is not None
        return default_queue
    priority = work_queue.priority
    if priority is None:
        taken = session.execute(
            sa.select(orm.WorkQueue.priority).where(orm.WorkQueue.work_pool_id == pool.id)
        ).scalars().all()
        priority = first_free_priority(taken)
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
    if work_queue.priority is not None:
        _make_room_for(session, pool.id, queue)
    return queue


def first_free_priority(taken: Sequence[int]) -> int:
    """The first place in 1, 2, 3, … where the taken priorities, in order, leave a gap (1, 2, 4 →
    3; 1, 1, 3 → 2, as Prefect counts them); one past the last when they leave none."""
    for expected, priority in enumerate(sorted(taken), start=1):
        if priority != expected:
            return expected
    return len(taken) + 1


def _make_room_for(session: Session, pool_id: uuid.UUID, queue: orm.WorkQueue) -> None:
    """`queue` keeps the priority it was given; it goes before the first other queue of the pool
    at that priority or lower, and every queue after it that would not come strictly after the
    one before it moves down to the next priority."""
    others = list(session.execute(
        sa.select(orm.WorkQueue)
        .where(orm.WorkQueue.work_pool_id == pool_id, orm.WorkQueue.id != queue.id)
        .order_by(orm.WorkQueue.priority, orm.WorkQueue.id)
    ).scalars())
    place = next((index for index, other in enumerate(others) if other.priority >= queue.priority), None)
    if place is not None:
        others.insert(place, queue)
    previous = 0
    for each in others:
        if each.priority <= previous:
            each.priority = previous + 1
        previous = each.priority
    session.flush()


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
    a queue alone means that queue in the default pool. Unknown names are not found; an empty
    name counts as none given, as Prefect's API takes it."""
    work_pool_name, work_queue_name = work_pool_name or None, work_queue_name or None
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


def _resolve_pool(session: Session, work_pool_name: str | None) -> tuple[orm.WorkPool, bool]:
    """The named pool (the default pool when none is named, created if missing), and whether this
    call created it."""
    if work_pool_name is None or work_pool_name == DEFAULT_POOL_NAME:
        return get_or_create_default_pool(session)
    pool = read_work_pool_by_name(session, work_pool_name)
    if pool is None:
        raise ObjectNotFoundError(f"work_pool_name: no work pool named {work_pool_name!r}")
    return pool, False
