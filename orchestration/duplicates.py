"""Replayed transitions: a transition id the run has already used is not applied twice."""

from models.schemas.states import State
from orchestration.context import FlowOrchestrationContext
from orchestration.rules import ALL_ORCHESTRATION_STATES, OrchestrationRule


class PreventDuplicateTransitions(OrchestrationRule[FlowOrchestrationContext]):
    """A proposal whose `transition_id` any state of the run already carries is a replay: it is
    rejected and the current state returned. (Prefect compares the current state only; we check
    the whole history, through the indexed `flow_run_state.transition_id` column.)"""

    FROM_STATES = ALL_ORCHESTRATION_STATES
    TO_STATES = ALL_ORCHESTRATION_STATES

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        transition_id = proposed_state.state_details.transition_id
        if transition_id is None:
            return
        if initial_state.state_details.transition_id == transition_id or context.has_made_transition(
            transition_id
        ):
            self.reject_transition(None, "This run has already made this state transition.")
