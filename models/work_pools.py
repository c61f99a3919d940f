"""Work pools; each gets a `default` queue when created."""

import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import orm
from models.errors import ValidationError
from models.schemas.actions import WorkPoolCreate

DEFAULT_POOL_NAME = "default-agent-pool"
DEFAULT_QUEUE_NAME = "default"
DEFAULT_QUEUE_DESCRIPTION = "The work pool's default queue."
AGENT_POOL_TYPE = "prefect-agent"
"""The type whose pools keep the status they are created with (Prefect's agent pools)."""
RESERVED_NAME_PREFIX = "prefect"
"""Prefect's API keeps the work pools whose names start with this, in any case, for its own use."""


def refuse_reserved_name(name: str) -> None:
    """Refuse a name a producer may not create a pool under, as Prefect's API does (a 403 there).

    The model function itself takes any name, as Prefect's does; the wire task asks this first."""
    if name.lower().startswith(RESERVED_NAME_PREFIX):
        raise ValidationError(
            f"work_pool.name: {name[:64]!r}: names starting with {RESERVED_NAME_PREFIX!r} (in any case) "
            "are reserved for Prefect's own work pools"
        )


def create_work_pool(session: Session, work_pool: WorkPoolCreate) -> orm.WorkPool:
    """Create a pool and its default queue; a taken name is refused. A pool of any type but an
    agent pool starts PAUSED when created paused."""
    pool = orm.WorkPool(**work_pool.model_dump())
    if pool.type != AGENT_POOL_TYPE and pool.is_paused:
        pool.status = "PAUSED"
    try:
        with session.begin_nested():
            session.add(pool)
            session.flush()
    except IntegrityError:
        raise ValidationError(f"work_pool.name: a work pool named {work_pool.name!r} already exists") from None
    queue = orm.WorkQueue(name=DEFAULT_QUEUE_NAME, description=DEFAULT_QUEUE_DESCRIPTION, work_pool_id=pool.id,
                          priority=1)
    session.add(queue)
    session.flush()
    pool.default_queue_id = queue.id
    session.flush()
    return pool


def read_work_pool(session: Session, work_pool_id: uuid.UUID) -> orm.WorkPool | None:
    return session.get(orm.WorkPool, work_pool_id)


def read_work_pool_by_name(session: Session, name: str) -> orm.WorkPool | None:
    return session.execute(sa.select(orm.WorkPool).where(orm.WorkPool.name == name)).scalar_one_or_none()


def get_or_create_default_pool(session: Session) -> tuple[orm.WorkPool, bool]:
    """The default agent pool, and whether this call created it (with its default queue)."""
    pool = read_work_pool_by_name(session, DEFAULT_POOL_NAME)
    if pool is not None:
        return pool, False
    return create_work_pool(session, WorkPoolCreate(name=DEFAULT_POOL_NAME, type=AGENT_POOL_TYPE)), True
