"""Entering PENDING: the guard against two workers submitting the same run."""

from typing import Any

from models.schemas.states import State, StateType
from orchestration.context import OrchestrationContext
from orchestration.rules import OrchestrationRule


class PreventPendingTransitions(OrchestrationRule[OrchestrationContext[Any]]):
    """A run already submitted (PENDING, RUNNING, CANCELLING) or cancelled cannot be submitted
    again; the second worker is aborted (flow runs, and background task runs). A PENDING run may move to a named PENDING sub-state
    (`Submitting`, `InfrastructurePending`), carrying its scheduled time and lease id along."""

    FROM_STATES = frozenset({StateType.PENDING, StateType.CANCELLING, StateType.RUNNING, StateType.CANCELLED})
    TO_STATES = frozenset({StateType.PENDING})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: OrchestrationContext[Any]
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        if (
            initial_state.type == StateType.PENDING
            and initial_state.name != proposed_state.name
            and proposed_state.name != "Pending"
        ):
            details, current = proposed_state.state_details, initial_state.state_details
            details.scheduled_time = current.scheduled_time
            details.deployment_concurrency_lease_id = current.deployment_concurrency_lease_id
            return
        self.abort_transition(
            f"This run is in a {initial_state.type.value} state and cannot transition to a PENDING state."
        )
