"""Task-run policies: ordered lists of rule classes, highest priority first, and the bookkeeping
every task-run transition gets."""

from typing import Any

from models.schemas.states import State, StateType
from orchestration.caching import CacheInsertion, CacheRetrieval
from orchestration.context import TaskOrchestrationContext
from orchestration.enclosing_flow import PreventRunningTasksFromStoppedFlows, UpdateFlowRunTrackerOnTasks
from orchestration.global_policy import COMMON_GLOBAL_TRANSFORMS, EnsureStateTimestampIsAfterCurrent
from orchestration.pending import PreventPendingTransitions
from orchestration.rules import AnyRule, OrchestrationRule, UniversalTransform
from orchestration.scheduling import CopyScheduledTime, WaitForScheduledTime
from orchestration.task_retries import RenameReruns, RetryFailedTasks
from orchestration.task_terminal import HandleTaskTerminalStateTransitions


class IncrementTaskRunCount(UniversalTransform[TaskOrchestrationContext]):
    """Each entry into RUNNING counts."""

    def before_transition(self, context: TaskOrchestrationContext) -> None:
        if not self.nullified_transition() and context.proposed_state_type == StateType.RUNNING:
            context.run.run_count += 1


CoreTaskPolicy: tuple[AnyRule, ...] = (
    CacheRetrieval,  # first: a cached result is handed out even to a run that could not start
    HandleTaskTerminalStateTransitions,
    PreventRunningTasksFromStoppedFlows,
    # Prefect's SecureTaskConcurrencySlots: tag concurrency limits cannot be created through the
    # contract, so there is never a slot to secure.
    CopyScheduledTime,
    WaitForScheduledTime,
    RetryFailedTasks,
    RenameReruns,
    UpdateFlowRunTrackerOnTasks,
    CacheInsertion,
    # Prefect's ReleaseTaskConcurrencySlots: no tag limits, nothing to release.
)
"""What `task_runs.set_task_run_state` applies to a proposed state (`force=False`), in Prefect
3.9.1's order."""

class CopyTaskParametersID(OrchestrationRule[TaskOrchestrationContext]):
    """Scheduled -> Pending -> Running: a background task's parameters id goes along, unless the
    proposal names its own."""

    FROM_STATES = frozenset({StateType.SCHEDULED, StateType.PENDING})
    TO_STATES = frozenset({StateType.PENDING, StateType.RUNNING})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: TaskOrchestrationContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        if not proposed_state.state_details.task_parameters_id:
            proposed_state.state_details.task_parameters_id = initial_state.state_details.task_parameters_id


BackgroundTaskPolicy: tuple[AnyRule, ...] = (
    PreventPendingTransitions,
    CacheRetrieval,
    HandleTaskTerminalStateTransitions,
    # Prefect's SecureTaskConcurrencySlots is left out here too: a cached state is retrieved first.
    CopyScheduledTime,
    CopyTaskParametersID,
    WaitForScheduledTime,
    RetryFailedTasks,
    RenameReruns,
    UpdateFlowRunTrackerOnTasks,
    CacheInsertion,
    # Prefect's ReleaseTaskConcurrencySlots (no tag limits) and EnqueueScheduledTasks (no task workers).
)
"""What a deferred state (a background task's: `state_details.deferred`) is proposed under, forced
or not, in Prefect 3.9.1's order: the core rules, no second submission, the parameters id kept."""

MinimalTaskPolicy: tuple[AnyRule, ...] = ()
"""Forced task-run transitions, and any caller that passes no policy (Prefect's only releases tag
concurrency slots)."""

GlobalTaskPolicy: tuple[Any, ...] = (
    EnsureStateTimestampIsAfterCurrent,
    *COMMON_GLOBAL_TRANSFORMS,
    IncrementTaskRunCount,
)
"""Bookkeeping on every task-run transition, forced or not (Prefect's GlobalTaskPolicy)."""
