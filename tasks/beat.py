"""The beat schedule: the maintenance tasks at the intervals the settings name.

Each entry expires before its next firing, so a backlog built up while no worker ran is
dropped instead of executed in a burst. Run exactly one beat.
"""

from typing import Any

from models.settings import Settings

EXPIRES_FRACTION = 0.9
"""An entry's message expires after this fraction of its interval."""


def _entry(task: str, interval: float) -> dict[str, Any]:
    return {"task": task, "schedule": interval, "options": {"expires": interval * EXPIRES_FRACTION}}


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        "reconcile-concurrency-slots": _entry(
            "maintenance.reconcile_concurrency_slots", settings.reconcile_slots_interval_seconds
        ),
        "mark-late-runs": _entry("maintenance.mark_late_runs", settings.late_runs_interval_seconds),
        "prune-processed-requests": _entry(
            "maintenance.prune_processed_requests", settings.prune_requests_interval_seconds
        ),
        "fail-expired-pauses": _entry("maintenance.fail_expired_pauses", settings.expired_pauses_interval_seconds),
        "clean-up-cancelled-runs": _entry(
            "maintenance.clean_up_cancelled_runs", settings.cancellation_cleanup_interval_seconds
        ),
    }
