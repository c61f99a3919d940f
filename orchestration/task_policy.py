"""Task-run policies: no rules of their own yet, but real bookkeeping on every transition."""

from typing import Any

from models.schemas.states import StateType
from orchestration.context import TaskOrchestrationContext
from orchestration.global_policy import COMMON_GLOBAL_TRANSFORMS, EnsureStateTimestampIsAfterCurrent
from orchestration.rules import AnyRule, UniversalTransform


class IncrementTaskRunCount(UniversalTransform[TaskOrchestrationContext]):
    """Each entry into RUNNING counts."""

    def before_transition(self, context: TaskOrchestrationContext) -> None:
        if not self.nullified_transition() and context.proposed_state_type == StateType.RUNNING:
            context.run.run_count += 1


class UpdateFlowRunTrackerOnTasks(UniversalTransform[TaskOrchestrationContext]):
    """A task run entering RUNNING records which attempt of its flow run it belongs to."""

    def before_transition(self, context: TaskOrchestrationContext) -> None:
        if self.nullified_transition() or context.proposed_state_type != StateType.RUNNING:
            return
        count = context.flow_run_run_count()
        if count is not None:
            context.run.flow_run_run_count = count


MinimalTaskPolicy: tuple[AnyRule, ...] = ()
"""Forced task-run transitions, and any caller that passes no policy (as Prefect's, which only
releases tag concurrency slots; flowruns has no tag limits)."""

GlobalTaskPolicy: tuple[Any, ...] = (
    EnsureStateTimestampIsAfterCurrent,
    *COMMON_GLOBAL_TRANSFORMS,
    IncrementTaskRunCount,
    UpdateFlowRunTrackerOnTasks,
)
"""Bookkeeping on every task-run transition."""
