"""The runs beat's monitors act on, found as Prefect's background services find them: paused runs
past their timeout, cancelled runs whose task runs are still going, subflows whose containing run
was cancelled, and runs left CANCELLING too long.

Each selection is bounded and read without locks; `orchestration.monitors` checks every run it
names again, under the run's row lock, before anything is written.
"""

import datetime
import uuid

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased

from models import orm
from models.schemas.states import TERMINAL_STATES, StateType

PAUSED_PAGE = 500
"""Paused runs read per query while looking for expired pauses."""

SUBFLOW_STATES = (StateType.PENDING, StateType.SCHEDULED, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING)
"""The states of a subflow that the cancellation of its containing run cancels."""

_UNFINISHED = tuple(set(StateType) - TERMINAL_STATES)


def pause_has_expired(details: object, now: datetime.datetime) -> bool:
    """Whether a PAUSED state's `pause_timeout` (in its state details) has passed."""
    timeout = getattr(details, "pause_timeout", None)
    return timeout is not None and timeout < now


def runs_paused_past_their_timeout(session: Session, now: datetime.datetime, limit: int) -> list[uuid.UUID]:
    """Up to `limit` PAUSED runs whose pause timed out before `now`, by id. The timeout lives in
    the state's JSON details, so paused runs are read a page at a time and checked here."""
    runs, states = orm.FlowRun, orm.FlowRunState
    found: list[uuid.UUID] = []
    after: uuid.UUID | None = None
    while len(found) < limit:
        page = (
            sa.select(runs.id, states.state_details)
            .join(states, states.id == runs.state_id)
            .where(runs.state_type == StateType.PAUSED)
            .order_by(runs.id)
            .limit(PAUSED_PAGE)
        )
        if after is not None:
            page = page.where(runs.id > after)
        rows = session.execute(page).all()
        found += [row.id for row in rows if pause_has_expired(row.state_details, now)]
        if len(rows) < PAUSED_PAGE:
            break
        after = rows[-1].id
    return found[:limit]


def unfinished_task_runs_of_cancelled_runs(
    session: Session, ended_after: datetime.datetime, runs: int, per_run: int
) -> list[uuid.UUID]:
    """The task runs still in a non-terminal state of up to `runs` CANCELLED runs that ended after
    `ended_after` (up to `per_run` of each), in one query, by run then task run id."""
    flow_runs, task_runs = orm.FlowRun, orm.TaskRun
    unfinished = task_runs.state_type.in_(_UNFINISHED)
    cancelled = (
        sa.select(flow_runs.id)
        .where(flow_runs.state_type == StateType.CANCELLED, flow_runs.end_time >= ended_after,
               sa.exists().where(task_runs.flow_run_id == flow_runs.id, unfinished))
        .order_by(flow_runs.id)
        .limit(runs)
        .cte("cancelled")
    )
    position = sa.func.row_number().over(partition_by=task_runs.flow_run_id, order_by=task_runs.id)
    ranked = (
        sa.select(task_runs.id, task_runs.flow_run_id, position.label("position"))
        .join(cancelled, cancelled.c.id == task_runs.flow_run_id)
        .where(unfinished)
        .subquery("ranked")
    )
    return list(session.execute(
        sa.select(ranked.c.id).where(ranked.c.position <= per_run).order_by(ranked.c.flow_run_id, ranked.c.id)
    ).scalars())


def orphaned_subflows(session: Session, limit: int) -> list[uuid.UUID]:
    """Up to `limit` unfinished subflows whose parent task run exists but whose containing run is
    CANCELLED, has no state, or is gone, by id. (Prefect reads any 200 unfinished subflows and
    checks each; selecting only these means a busy server never starves the ones that matter.)"""
    subflows, containing = orm.FlowRun, aliased(orm.FlowRun)
    parent_tasks = orm.TaskRun
    return list(session.execute(
        sa.select(subflows.id)
        .join(parent_tasks, parent_tasks.id == subflows.parent_task_run_id)
        .outerjoin(containing, containing.id == parent_tasks.flow_run_id)
        .where(
            subflows.state_type.in_(SUBFLOW_STATES),
            parent_tasks.flow_run_id.is_not(None),
            sa.or_(containing.id.is_(None), containing.state_type.is_(None),
                   containing.state_type == StateType.CANCELLED),
        )
        .order_by(subflows.id)
        .limit(limit)
    ).scalars())


def runs_cancelling_since(session: Session, entered_before: datetime.datetime, limit: int) -> list[uuid.UUID]:
    """Up to `limit` CANCELLING runs that entered that state before `entered_before`, oldest first."""
    runs = orm.FlowRun
    return list(session.execute(
        sa.select(runs.id)
        .where(runs.state_type == StateType.CANCELLING, runs.state_timestamp < entered_before)
        .order_by(runs.state_timestamp, runs.id)
        .limit(limit)
    ).scalars())


def lock_flow_run(session: Session, flow_run_id: uuid.UUID) -> sa.Row[tuple[object, ...]] | None:
    """The run's columns a monitor checks (`state_type`, `state_id`, `state_timestamp`,
    `deployment_id`, `parent_task_run_id`) and its state's `state_details`, the run's row locked
    until the transaction ends (on PostgreSQL; SQLite has one writer anyway). None if it is gone."""
    runs, states = orm.FlowRun, orm.FlowRunState
    return session.execute(
        sa.select(runs.state_type, runs.state_id, runs.state_timestamp, runs.deployment_id, runs.parent_task_run_id,
                  states.state_details)
        .outerjoin(states, states.id == runs.state_id)
        .where(runs.id == flow_run_id)
        .with_for_update(of=runs)
    ).first()


def lock_task_run(session: Session, task_run_id: uuid.UUID) -> sa.Row[tuple[object, ...]] | None:
    """The task run's `state_type`, its row locked as `lock_flow_run` locks; None if it is gone."""
    return session.execute(
        sa.select(orm.TaskRun.state_type).where(orm.TaskRun.id == task_run_id).with_for_update()
    ).first()


def containing_run_state_type(session: Session, parent_task_run_id: uuid.UUID) -> tuple[bool, StateType | None]:
    """For a subflow's parent task run: whether it exists with a containing run id, and that
    run's state type (None when the run has no state or is gone)."""
    parent = session.execute(
        sa.select(orm.TaskRun.flow_run_id, orm.FlowRun.state_type)
        .outerjoin(orm.FlowRun, orm.FlowRun.id == orm.TaskRun.flow_run_id)
        .where(orm.TaskRun.id == parent_task_run_id)
    ).first()
    if parent is None or parent.flow_run_id is None:
        return False, None
    return True, parent.state_type
