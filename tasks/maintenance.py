"""The beat-driven maintenance tasks. Each is idempotent, logs what it changed and returns it.

They are not retried: the next beat firing is the retry, and their messages expire before it.
"""

import datetime
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from models import concurrency_slots, flow_runs, maintenance_runs, requests, run_monitors
from models.database import unit_of_work
from models.errors import ObjectNotFoundError
from models.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterNextScheduledStartTime,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
)
from models.schemas.responses import SetStateStatus
from models.schemas.sorting import FlowRunSort
from models.schemas.states import Late, StateType
from models.settings import get_settings
from models.types import now_utc
from orchestration import MarkLateRunsPolicy, monitors
from tasks import monitoring_events
from tasks.worker_app import app

logger = logging.getLogger(__name__)

LATE_RUNS_BATCH = 400
"""At most this many runs are marked late per firing (as Prefect's late-runs service)."""
PRUNE_BATCH = 10_000
"""Inbox rows forgotten per transaction."""
PRUNE_BATCHES_PER_FIRING = 50
"""At most this many prune transactions per firing."""
MONITOR_BATCH = 200
"""At most this many runs per firing for each of the pause and cancellation monitors (as Prefect's)."""
TASK_RUNS_PER_CANCELLED_RUN = 100
"""At most this many task runs of one cancelled run are cancelled per firing (as Prefect's)."""
CANCELLED_RUNS_LOOKBACK = datetime.timedelta(hours=24)
"""Cancelled runs that ended longer ago than this are no longer checked for unfinished task runs."""


def heartbeat(task_name: str, outcome: Any) -> Any:
    """Note the run (beat's heartbeat, read by `flowruns check`) and return its outcome."""
    with unit_of_work() as session:
        maintenance_runs.record_run(session, task_name, outcome)
    return outcome


@app.task(name="maintenance.reconcile_concurrency_slots")
def reconcile_concurrency_slots() -> dict[str, Any]:
    """Recount every limit from its holding records; release holdings of gone or inactive runs."""
    with unit_of_work() as session:
        report = concurrency_slots.reconcile(session)
    logger.info("reconciled concurrency slots: %s", report.as_dict())
    if any(report.as_dict().values()):
        monitoring_events.emit(monitoring_events.REPAIR, **report.as_dict())
    return heartbeat("maintenance.reconcile_concurrency_slots", report.as_dict())


@app.task(name="maintenance.mark_late_runs")
def mark_late_runs() -> int:
    """Propose `Late` to each run still `Scheduled` past the threshold, one transaction per run;
    the late-runs policy leaves alone a run that moved on meanwhile. Returns how many became Late."""
    cutoff = now_utc() - datetime.timedelta(seconds=get_settings().late_runs_after_seconds)
    with unit_of_work() as session:
        candidates = [
            (run.id, run.next_scheduled_start_time)
            for run in flow_runs.read_flow_runs(
                session,
                flow_run_filter=_scheduled_before(cutoff),
                sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
                limit=LATE_RUNS_BATCH,
            )
        ]
    marked = _each_in_its_own_transaction(candidates, _mark_late)
    if marked:
        logger.info("marked %d of %d overdue scheduled runs late", marked, len(candidates))
        monitoring_events.emit(monitoring_events.LATE, marked=marked)
    return heartbeat("maintenance.mark_late_runs", marked)


def _scheduled_before(cutoff: datetime.datetime) -> FlowRunFilter:
    return FlowRunFilter(
        state=FlowRunFilterState(
            type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]),
            name=FlowRunFilterStateName(any_=["Scheduled"]),
        ),
        next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=cutoff),
    )


def _mark_late(session: Session, candidate: tuple[Any, datetime.datetime | None]) -> bool:
    flow_run_id, scheduled_time = candidate
    result = flow_runs.set_flow_run_state(
        session, flow_run_id, Late(scheduled_time=scheduled_time), flow_policy=MarkLateRunsPolicy
    )
    return result.status == SetStateStatus.ACCEPT


@app.task(name="maintenance.prune_processed_requests")
def prune_processed_requests() -> int:
    """Forget inbox rows older than the retention period, a batch per transaction (each short, well
    within the statement timeout; what one firing leaves, the next takes); returns how many went."""
    older_than = now_utc() - datetime.timedelta(seconds=get_settings().processed_request_retention_seconds)
    pruned = 0
    for _ in range(PRUNE_BATCHES_PER_FIRING):
        with unit_of_work() as session:
            batch = requests.prune(session, older_than, limit=PRUNE_BATCH)
        pruned += batch
        if batch < PRUNE_BATCH:
            break
    if pruned:
        logger.info("pruned %d processed requests recorded before %s", pruned, older_than.isoformat())
    return heartbeat("maintenance.prune_processed_requests", pruned)


@app.task(name="maintenance.fail_expired_pauses")
def fail_expired_pauses() -> int:
    """Fail each run still PAUSED past its pause timeout, one transaction per run; returns how many."""
    now = now_utc()
    with unit_of_work() as session:
        expired = run_monitors.runs_paused_past_their_timeout(session, now, MONITOR_BATCH)
    failed = _each_in_its_own_transaction(expired, lambda session, run_id: monitors.fail_expired_pause(session, run_id, now))
    if failed:
        logger.info("failed %d of %d runs paused past their timeout", failed, len(expired))
    return heartbeat("maintenance.fail_expired_pauses", failed)


@app.task(name="maintenance.clean_up_cancelled_runs")
def clean_up_cancelled_runs() -> dict[str, int]:
    """What a cancelled run leaves behind, one transaction per run: its unfinished task runs are
    cancelled, subflows of a cancelled run are cancelled (a deployment's go to Cancelling), and
    runs CANCELLING for longer than `FLOWRUNS_CANCELLING_TIMEOUT_SECONDS` are marked Cancelled.
    Returns how many of each."""
    now = now_utc()
    timed_out_before = now - datetime.timedelta(seconds=get_settings().cancelling_timeout_seconds)
    with unit_of_work() as session:
        task_run_ids = run_monitors.unfinished_task_runs_of_cancelled_runs(
            session, now - CANCELLED_RUNS_LOOKBACK, runs=MONITOR_BATCH, per_run=TASK_RUNS_PER_CANCELLED_RUN
        )
        subflows = run_monitors.orphaned_subflows(session, MONITOR_BATCH)
        cancelling = run_monitors.runs_cancelling_since(session, timed_out_before, MONITOR_BATCH)
    report = {
        "task_runs_cancelled": _each_in_its_own_transaction(task_run_ids, monitors.cancel_task_run_of_cancelled_run),
        "subflows_cancelled": _each_in_its_own_transaction(subflows, monitors.cancel_orphaned_subflow),
        "cancelling_timed_out": _each_in_its_own_transaction(
            cancelling, lambda session, run_id: monitors.time_out_cancelling_run(session, run_id, timed_out_before)
        ),
    }
    if any(report.values()):
        logger.info("cleaned up after cancelled runs: %s", report)
    return heartbeat("maintenance.clean_up_cancelled_runs", report)


def _each_in_its_own_transaction(ids: list[Any], act: Callable[[Session, Any], bool]) -> int:
    """Apply `act` to each id in a transaction of its own; how many it changed. An id gone since
    it was selected is skipped."""
    changed = 0
    for each in ids:
        try:
            with unit_of_work() as session:
                changed += act(session, each)
        except ObjectNotFoundError:
            continue
    return changed
