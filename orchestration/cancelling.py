"""Cancellation: CANCELLING only ends in CANCELLED; runs without infrastructure skip CANCELLING."""

from models.schemas.states import Cancelled, State, StateType
from orchestration.context import FlowOrchestrationContext
from orchestration.rules import ALL_ORCHESTRATION_STATES, OrchestrationRule


class EnforceCancellingToCancelledTransition(OrchestrationRule[FlowOrchestrationContext]):
    """A cancelling run may only become CANCELLED."""

    FROM_STATES = frozenset({StateType.CANCELLING})
    TO_STATES = ALL_ORCHESTRATION_STATES - {StateType.CANCELLED}

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        self.reject_transition(
            None, "Cannot transition flows that are cancelling to a state other than Cancelled."
        )


class BypassCancellingFlowRunsWithNoInfra(OrchestrationRule[FlowOrchestrationContext]):
    """Nothing to tear down (a scheduled run without a process, a run resuming from suspension,
    a suspended run): cancelling becomes CANCELLED at once."""

    FROM_STATES = frozenset({StateType.SCHEDULED, StateType.PAUSED})
    TO_STATES = frozenset({StateType.CANCELLING})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        no_process = initial_state.type == StateType.SCHEDULED and not context.run.infrastructure_pid
        if no_process or initial_state.name == "Resuming":
            self.reject_transition(Cancelled(), "Scheduled flow run has no infrastructure to terminate.")
        elif initial_state.type == StateType.PAUSED and initial_state.state_details.pause_reschedule:
            self.reject_transition(Cancelled(), "Suspended flow run has no infrastructure to terminate.")
