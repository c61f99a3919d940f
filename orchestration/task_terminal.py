"""A task run leaving (or overwriting) a terminal state."""

from models.schemas.states import TERMINAL_STATES, State, StateType
from orchestration.context import TaskOrchestrationContext, has_persisted_result
from orchestration.rules import ALL_ORCHESTRATION_STATES, OrchestrationRule

NOT_AFTER_A_TERMINAL_STATE = frozenset({StateType.CANCELLING, StateType.PAUSED, StateType.CRASHED})


class HandleTaskTerminalStateTransitions(OrchestrationRule[TaskOrchestrationContext]):
    """A finished task run cannot be set cancelling, paused or crashed, and one COMPLETED with a
    persisted result stays so. Leaving a terminal state for a non-final one starts its retries
    afresh (`run_count` back to 0; put back if a later rule overrules); starting again because
    its flow run is on a later attempt than the one it last ran in is named `Retrying`."""

    FROM_STATES = frozenset(TERMINAL_STATES)
    TO_STATES = ALL_ORCHESTRATION_STATES

    original_run_count: int | None = None

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: TaskOrchestrationContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        self.original_run_count = context.run.run_count
        if proposed_state.type in NOT_AFTER_A_TERMINAL_STATE:
            self.abort_transition(f"Run is already {initial_state.type.value}.")
            return
        if initial_state.is_completed() and bool(initial_state.data) and has_persisted_result(initial_state.data):
            self.reject_transition(None, "This run is already completed.")
            return
        if not proposed_state.is_final():
            context.run.run_count = 0
        if proposed_state.is_running() and _flow_run_is_retrying(context):
            self.rename_state("Retrying")

    def cleanup(
        self, initial_state: State | None, validated_state: State | None, context: TaskOrchestrationContext
    ) -> None:
        if self.original_run_count is not None:
            context.run.run_count = self.original_run_count


def _flow_run_is_retrying(context: TaskOrchestrationContext) -> bool:
    """The task run's flow run has started again since the task run last ran."""
    flow_run = context.flow_run()
    return flow_run is not None and context.run.flow_run_run_count < flow_run.run_count
