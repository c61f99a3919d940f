"""Deployment concurrency slots, counted exactly through holding records.

A run holds a slot of a limit while a `SlotHolding` row (limit id, run id) exists; the row's
id is the lease id stamped on the run's state. Acquiring increments the limit and inserts the
row in the caller's transaction; releasing deletes the row and decrements only the limits whose
row was actually deleted. So a release is idempotent, a run that never acquired releases
nothing, and at every commit `active_slots == holding records <= limit`.

Lock order everywhere: the run row (held by the caller), then the limit row.
"""

import dataclasses
import functools
import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.schemas.states import ACTIVE_STATES, AWAITING_RETRY, StateType
from models.types import JSON, Timestamp, now_utc

logger = logging.getLogger(__name__)

_RELEASED = "flowruns.slots_released"
"""`session.info` key: how many slots this session's transactions released (see `slots_released`)."""

Limit = orm.ConcurrencyLimit
Holding = orm.SlotHolding


def acquire_slot(
    session: Session, limit_id: uuid.UUID, flow_run_id: uuid.UUID, holding_id: uuid.UUID | None = None
) -> uuid.UUID | None:
    """Take one slot of the limit for the run; the holding (lease) id (`holding_id` if given), or
    None when none is free.

    An inactive limit behaves as full. The caller makes sure the run holds no slot of this
    limit yet (a second holding would break the unique pair and fail the transaction).
    """
    parameters = {"limit_id": limit_id, "holding_id": holding_id or uuid.uuid4(), "run_id": flow_run_id,
                  "now": now_utc()}
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        return connection.execute(_acquire_statement(), parameters).scalar_one_or_none()
    taken = connection.execute(_take_slot_statement(), parameters)
    if taken.rowcount != 1:
        return None
    connection.execute(_record_holding_statement(), parameters)
    return parameters["holding_id"]


def release_slot(session: Session, holding_id: uuid.UUID) -> bool:
    """Give back the slot of one holding; False if it was already released."""
    return _release(session, Holding.id, holding_id) > 0


def release_flow_run_slots(session: Session, flow_run_id: uuid.UUID) -> int:
    """Give back every slot the run holds; how many. Idempotent; works when the run is gone."""
    return _release(session, Holding.flow_run_id, flow_run_id)


def release_slots_of_inactive_run(session: Session, flow_run_id: uuid.UUID) -> int:
    """Give back the run's slots only if it is gone or in a state that keeps none (see
    `keeps_deployment_slot`); how many.

    For a late safety net: a run that moved on and secured a slot again keeps it.
    """
    keeps = session.execute(
        sa.select(run_keeps_its_slot()).where(orm.FlowRun.id == flow_run_id).with_for_update(of=orm.FlowRun)
    ).scalar_one_or_none()
    if keeps:
        return 0
    return release_flow_run_slots(session, flow_run_id)


def run_keeps_its_slot() -> sa.ColumnElement[bool]:
    """SQL over `flow_run`: the run is in a state that keeps its deployment slot, the same
    predicate as `models.schemas.states.keeps_deployment_slot` (a blocking pause is read from
    the current state's details)."""
    state = orm.FlowRunState
    pause_reschedule = sa.type_coerce(state.state_details, JSON())["pause_reschedule"].as_boolean()
    blocking_pause = (
        sa.select(sa.literal(True))
        .where(state.id == orm.FlowRun.state_id, sa.func.coalesce(pause_reschedule, False).is_(False))
        .exists()
    )
    return sa.or_(
        orm.FlowRun.state_type.in_(ACTIVE_STATES),
        sa.and_(orm.FlowRun.state_type == StateType.SCHEDULED, orm.FlowRun.state_name == AWAITING_RETRY),
        sa.and_(orm.FlowRun.state_type == StateType.PAUSED, blocking_pause),
    )


def note_released(session: Session, count: int) -> None:
    """Count slots a transition's own statement released (`slots_released` reports them)."""
    session.info[_RELEASED] = slots_released(session) + count


def slots_released(session: Session) -> int:
    """How many slots were released through this session (by any rule or function)."""
    return int(session.info.get(_RELEASED, 0))


def holding_for(session: Session, flow_run_id: uuid.UUID, limit_id: uuid.UUID) -> uuid.UUID | None:
    """The id of the run's holding of the limit, if it holds a slot of it."""
    return session.execute(
        sa.select(Holding.id).where(
            Holding.flow_run_id == flow_run_id, Holding.concurrency_limit_id == limit_id
        )
    ).scalar_one_or_none()


def holds_slot(session: Session, flow_run_id: uuid.UUID, limit_id: uuid.UUID | None = None) -> bool:
    """Whether the run holds a slot (of the given limit, or of any)."""
    statement = sa.select(Holding.id).where(Holding.flow_run_id == flow_run_id)
    if limit_id is not None:
        statement = statement.where(Holding.concurrency_limit_id == limit_id)
    return session.execute(statement.limit(1)).first() is not None


def _release(session: Session, key: sa.ColumnElement[Any], value: uuid.UUID) -> int:
    """Release the holdings whose `key` is `value`, counted in the session (`slots_released`)."""
    count = _delete_holdings(session, key, value)
    if count:
        note_released(session, count)
    return count


def _delete_holdings(session: Session, key: sa.ColumnElement[Any], value: uuid.UUID) -> int:
    """Delete the holdings, then decrement the limits of those actually deleted (one statement on
    PostgreSQL); how many."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        released = connection.execute(_release_statement(key.key), {"value": value, "now": now_utc()})
        return sum(released.scalars())
    # SQLite transactions hold the database write lock (BEGIN IMMEDIATE): no one can delete the
    # rows between the two statements.
    rows = session.execute(sa.select(Holding.id, Holding.concurrency_limit_id).where(key == value)).all()
    if not rows:
        return 0
    session.execute(
        sa.delete(Holding)
        .where(Holding.id.in_([row.id for row in rows]))
        .execution_options(synchronize_session=False)
    )
    limit_ids = [row.concurrency_limit_id for row in rows]
    _decrement(session, limit_ids)
    return len(limit_ids)


def _decrement(session: Session, limit_ids: Iterable[uuid.UUID]) -> None:
    """One slot off each limit per id given, never below zero (active or not: counts stay exact)."""
    for count, ids in _group_by_count(limit_ids).items():
        session.execute(
            sa.update(Limit)
            .where(Limit.id.in_(ids))
            .values(active_slots=sa.case((Limit.active_slots > count, Limit.active_slots - count), else_=0))
            .execution_options(synchronize_session=False)
        )


def _group_by_count(limit_ids: Iterable[uuid.UUID]) -> dict[int, list[uuid.UUID]]:
    groups: dict[int, list[uuid.UUID]] = {}
    for limit_id, count in Counter(limit_ids).items():
        groups.setdefault(count, []).append(limit_id)
    return groups


# -- statements (built once) -------------------------------------------------------------------

_limits: sa.Table = Limit.__table__  # type: ignore[assignment]
_holdings: sa.Table = Holding.__table__  # type: ignore[assignment]


def _slot_taken() -> sa.Update:
    """One more active slot, if the limit is active and has one free."""
    return (
        sa.update(_limits)
        .where(
            _limits.c.id == sa.bindparam("limit_id"),
            _limits.c.active,
            _limits.c.active_slots + 1 <= _limits.c.limit,
        )
        .values(active_slots=_limits.c.active_slots + 1, updated=sa.bindparam("now", type_=Timestamp()))
    )


@functools.cache
def _take_slot_statement() -> sa.Update:
    return _slot_taken()


@functools.cache
def _record_holding_statement() -> sa.Insert:
    return sa.insert(_holdings).values(
        id=sa.bindparam("holding_id"),
        concurrency_limit_id=sa.bindparam("limit_id"),
        flow_run_id=sa.bindparam("run_id"),
        acquired_at=sa.bindparam("now"),
    )


@functools.cache
def _acquire_statement() -> sa.Insert:
    """PostgreSQL: `WITH taken AS (UPDATE limit ... RETURNING id) INSERT INTO holding SELECT ...
    FROM taken RETURNING id`: the holding exists exactly when the slot was taken."""
    taken = _slot_taken().returning(_limits.c.id).cte("taken")
    holding = sa.select(
        sa.bindparam("holding_id", type_=sa.Uuid()),
        taken.c.id,
        sa.bindparam("run_id", type_=sa.Uuid()),
        sa.bindparam("now", type_=Timestamp()),
    )
    columns = ["id", "concurrency_limit_id", "flow_run_id", "acquired_at"]
    return sa.insert(_holdings).from_select(columns, holding).returning(_holdings.c.id)


@functools.cache
def _release_statement(key: str) -> sa.Update:
    """PostgreSQL: delete the holdings with `key = :value`, then take one slot per deleted
    holding off its limit (never below zero); returns each limit's count released."""
    released = (
        sa.delete(_holdings)
        .where(_holdings.c[key] == sa.bindparam("value", type_=sa.Uuid()))
        .returning(_holdings.c.concurrency_limit_id)
        .cte("released")
    )
    counts = (
        sa.select(released.c.concurrency_limit_id, sa.func.count().label("released"))
        .group_by(released.c.concurrency_limit_id)
        .cte("counts")
    )
    slots, released_here = _limits.c.active_slots, counts.c.released
    remaining = sa.case((slots > released_here, slots - released_here), else_=0)
    return (
        sa.update(_limits)
        .where(_limits.c.id == counts.c.concurrency_limit_id)
        .values(active_slots=remaining, updated=sa.bindparam("now", type_=Timestamp()))
        .returning(counts.c.released)
    )


@dataclasses.dataclass(frozen=True)
class ReconcileReport:
    """What `reconcile` fixed: stale holdings released, limits whose count was wrong, by how much."""

    holdings_released: int = 0
    limits_corrected: int = 0
    slots_adjusted: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def reconcile(session: Session) -> ReconcileReport:
    """Repair drift: drop holdings of runs that are gone or in a state that keeps no slot, then
    set every deployment limit's `active_slots` to its number of holding records. Logs what it fixed.
    """
    active_run = sa.exists().where(orm.FlowRun.id == Holding.flow_run_id, run_keeps_its_slot())
    stale = session.execute(sa.select(Holding.id).where(~active_run)).scalars().all()
    if stale:
        session.execute(
            sa.delete(Holding).where(Holding.id.in_(stale)).execution_options(synchronize_session=False)
        )

    # Lock the limits (in id order) before counting: a concurrent acquire or release then
    # either committed before our count or waits until we commit.
    counted = sa.or_(
        Limit.id.in_(sa.select(orm.Deployment.concurrency_limit_id)),
        Limit.id.in_(sa.select(Holding.concurrency_limit_id)),
    )
    limits = session.execute(
        sa.select(Limit.id, Limit.active_slots).where(counted).order_by(Limit.id).with_for_update()
    ).all()
    held = dict(
        session.execute(
            sa.select(Holding.concurrency_limit_id, sa.func.count()).group_by(Holding.concurrency_limit_id)
        ).all()
    )
    corrected = adjusted = 0
    for limit_id, active_slots in limits:
        actual = held.get(limit_id, 0)
        if active_slots != actual:
            session.execute(
                sa.update(Limit)
                .where(Limit.id == limit_id)
                .values(active_slots=actual)
                .execution_options(synchronize_session=False)
            )
            corrected += 1
            adjusted += abs(active_slots - actual)
            logger.warning(
                "limit %s counted %d active slots, holds %d: corrected", limit_id, active_slots, actual
            )
    if stale:
        logger.warning("released %d slot holdings of runs that are gone or keep no slot", len(stale))
    return ReconcileReport(holdings_released=len(stale), limits_corrected=corrected, slots_adjusted=adjusted)
