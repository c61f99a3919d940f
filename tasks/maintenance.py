"""The beat-driven maintenance tasks. Each is idempotent, logs what it changed and returns it.

They are not retried: the next beat firing is the retry, and their messages expire before it.
"""

import datetime
import logging
from typing import Any

from models import concurrency_slots, flow_runs, maintenance_runs, requests
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
from orchestration import MarkLateRunsPolicy
from tasks import monitoring_events
from tasks.worker_app import app

logger = logging.getLogger(__name__)

LATE_RUNS_BATCH = 400
"""At most this many runs are marked late per firing (as Prefect's late-runs service)."""
PRUNE_BATCH = 10_000
"""Inbox rows forgotten per transaction."""
PRUNE_BATCHES_PER_FIRING = 50
"""At most this many prune transactions per firing."""


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
    marked = sum(_mark_late(run_id, scheduled_time) for run_id, scheduled_time in candidates)
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


def _mark_late(flow_run_id: Any, scheduled_time: datetime.datetime | None) -> bool:
    try:
        with unit_of_work() as session:
            result = flow_runs.set_flow_run_state(
                session, flow_run_id, Late(scheduled_time=scheduled_time), flow_policy=MarkLateRunsPolicy
            )
    except ObjectNotFoundError:  # deleted since it was selected
        return False
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
