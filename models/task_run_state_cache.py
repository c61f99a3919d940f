"""The task-run state cache: COMPLETED states remembered by cache key, for runs that would
compute the same result again.

Entries are found by the key's digest (indexed) and confirmed by the key itself. Both
statements run on the session's connection, never `Session.execute`: they are issued in the
middle of a transition, while the run being orchestrated may be dirty in the session, and an
autoflush would write its changes behind the orchestration's back.
"""

import datetime
import functools
import hashlib
import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import driver_sql, orm
from models.run_snapshots import StateRecord
from models.types import now_utc


def cache_key_digest(cache_key: str) -> str:
    """The key's sha256, hex: fixed-size, the same on every dialect. (Lone surrogates, which
    JSON can carry, are encoded as they are rather than refused.)"""
    return hashlib.sha256(cache_key.encode("utf-8", "surrogatepass")).hexdigest()


def insert_cache_entry(
    session: Session,
    cache_key: str,
    cache_expiration: datetime.datetime | None,
    task_run_state_id: uuid.UUID,
) -> None:
    """Remember the state under `cache_key` until `cache_expiration` (None: for good)."""
    now = now_utc()
    driver_sql.execute(
        session,
        _insert_statement(),
        {
            "id": uuid.uuid4(),
            "created": now,
            "updated": now,
            "cache_key": cache_key,
            "cache_key_digest": cache_key_digest(cache_key),
            "cache_expiration": cache_expiration,
            "task_run_state_id": task_run_state_id,
        },
    )


def read_cached_state(session: Session, cache_key: str, at: datetime.datetime) -> StateRecord | None:
    """The state of the newest entry for `cache_key` unexpired at `at`; None when there is no such
    entry, or when its state is gone (an older entry is not tried, as Prefect)."""
    row = driver_sql.first(
        session,
        _read_statement(),
        {"digest": cache_key_digest(cache_key), "cache_key": cache_key, "at": at, "newest": 1},
    )
    return StateRecord(*row) if row is not None else None


@functools.cache
def _insert_statement() -> sa.Insert:
    return sa.insert(orm.TaskRunStateCache.__table__)


@functools.cache
def _read_statement() -> sa.Select[Any]:
    cache = orm.TaskRunStateCache.__table__
    state = orm.TaskRunState.__table__
    newest = (
        sa.select(cache.c.task_run_state_id)
        .where(
            cache.c.cache_key_digest == sa.bindparam("digest"),
            cache.c.cache_key == sa.bindparam("cache_key"),
            sa.or_(cache.c.cache_expiration.is_(None), cache.c.cache_expiration > sa.bindparam("at")),
        )
        .order_by(cache.c.created.desc())
        .limit(sa.bindparam("newest"))  # bound by name: driver_sql passes only the values given
        .scalar_subquery()
    )
    return sa.select(*(state.c[name] for name in StateRecord.FIELDS)).where(state.c.id == newest)
