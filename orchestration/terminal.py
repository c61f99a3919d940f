"""Leaving (or overwriting) a terminal state."""

from typing import Any

from models.schemas.states import TERMINAL_STATES, State, StateType
from orchestration.context import FlowOrchestrationContext, has_persisted_result, update_run_policy
from orchestration.rules import ALL_ORCHESTRATION_STATES, OrchestrationRule

OVERWRITE_RESULT_REASON = (
    "Cannot overwrite a COMPLETED state that carries persisted result data with one that does not."
)


def _loses_persisted_result(initial_state: State, proposed_state: State) -> bool:
    """COMPLETED with a persisted result, to COMPLETED without one."""
    return (
        initial_state.is_completed()
        and proposed_state.is_completed()
        and bool(initial_state.data)
        and has_persisted_result(initial_state.data)
        and not has_persisted_result(proposed_state.data)
    )


class HandleFlowTerminalStateTransitions(OrchestrationRule[FlowOrchestrationContext]):
    """A finished run may not be crashed, paused or cancelled; a persisted COMPLETED result may
    not be discarded; only deployment runs can be rescheduled. A run that leaves a terminal state
    starts a fresh attempt: its pause bookkeeping is reset. When a later rule replaces the
    proposal, the bookkeeping is that of the state actually entered: reset for any rerun (a
    bounced one included, so every pause of the rerun fires again), as it was for a run that
    stays terminal."""

    FROM_STATES = frozenset(TERMINAL_STATES)
    TO_STATES = ALL_ORCHESTRATION_STATES

    original_policy: Any = None

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        self.original_policy = context.run.empirical_policy
        if proposed_state.type in {StateType.CANCELLING, StateType.PAUSED, StateType.CRASHED}:
            self.abort_transition(f"Run is already in terminal state {initial_state.type.value}.")
            return
        persisted = bool(initial_state.data) and has_persisted_result(initial_state.data)
        if initial_state.is_completed() and not proposed_state.is_final() and persisted:
            self.reject_transition(None, "Run is already COMPLETED.")
            return
        if _loses_persisted_result(initial_state, proposed_state):
            self.reject_transition(None, OVERWRITE_RESULT_REASON)
            return
        if proposed_state.is_scheduled() and context.run.deployment_id is None:
            self.abort_transition("Cannot reschedule a run without an associated deployment.")
            return
        _start_fresh_attempt(context, proposed_state)

    def cleanup(
        self, initial_state: State | None, validated_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if self.original_policy is None:
            return
        context.run.empirical_policy = self.original_policy
        if validated_state is not None and initial_state is not None and validated_state.id != initial_state.id:
            _start_fresh_attempt(context, validated_state)


def _start_fresh_attempt(context: FlowOrchestrationContext, entered: State) -> None:
    """Leaving a terminal state for `entered`: a rerun's pauses fire again (Prefect's bookkeeping)."""
    if not entered.is_final() and context.api_version_at_least("0.8.4"):
        update_run_policy(
            context.run,
            resuming=False,
            pause_keys=set(),
            retry_type="reschedule" if entered.is_scheduled() else None,
        )


class PreventResultDataLoss(OrchestrationRule[FlowOrchestrationContext]):
    """Even forced, a COMPLETED state with a persisted result is not replaced by one without."""

    FROM_STATES = frozenset(TERMINAL_STATES)
    TO_STATES = frozenset(TERMINAL_STATES)

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        if _loses_persisted_result(initial_state, proposed_state):
            self.reject_transition(None, OVERWRITE_RESULT_REASON)
