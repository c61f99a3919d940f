"""Pausing and resuming: only running runs pause, each pause key fires once, pauses time out."""

import uuid

from models.schemas.states import Failed, State, StateType
from models.types import now_utc
from orchestration.context import FlowOrchestrationContext, update_run_policy
from orchestration.rules import ALL_ORCHESTRATION_STATES, OrchestrationRule


def _as_prefect_renders(state_type: StateType) -> str:
    """A state type as Prefect 3.9.1's f-strings render its enum: `StateType.PENDING`."""
    return f"StateType.{state_type.value}"


def _verb(state: State) -> str:
    return "suspend" if state.name == "Suspended" else "pause"


class HandlePausingFlows(OrchestrationRule[FlowOrchestrationContext]):
    """A RUNNING run may pause once per pause key; only top-level deployment runs may suspend
    (pause with reschedule). The key is recorded when the pause is written."""

    FROM_STATES = ALL_ORCHESTRATION_STATES
    TO_STATES = frozenset({StateType.PAUSED})

    key: str | None = None

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if proposed_state is None:
            return
        verb = _verb(proposed_state)
        if initial_state is None:
            self.abort_transition(f"Cannot {verb} flows with no state.")
            return
        if not initial_state.is_running():
            self.reject_transition(None, f"Cannot {verb} flows that are not currently running.")
            return
        self.key = proposed_state.state_details.pause_key or str(uuid.uuid4())
        if self.key in (context.run.empirical_policy.pause_keys or set()):
            self.reject_transition(None, f"This {verb} has already fired.")
            return
        if proposed_state.state_details.pause_reschedule:
            if context.run.parent_task_run_id is not None:
                self.abort_transition(f"Cannot {verb} subflows.")
            elif context.run.deployment_id is None:
                self.abort_transition(f"Cannot {verb} flows without a deployment.")

    def after_transition(
        self, initial_state: State | None, validated_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        keys = set(context.run.empirical_policy.pause_keys or set())
        update_run_policy(context.run, pause_keys=keys | {self.key})


class HandleResumingPausedFlows(OrchestrationRule[FlowOrchestrationContext]):
    """A PAUSED run may resume (RUNNING), be rescheduled, be cancelled or finish; a suspended
    run needs a deployment to be rescheduled; an expired pause fails instead of resuming."""

    FROM_STATES = frozenset({StateType.PAUSED})
    TO_STATES = ALL_ORCHESTRATION_STATES

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        leaves_pause = proposed_state.type in {StateType.RUNNING, StateType.SCHEDULED, StateType.CANCELLING}
        if not (leaves_pause or proposed_state.is_final()):
            self.reject_transition(
                None,
                f"This run cannot transition to the {_as_prefect_renders(proposed_state.type)} state"
                f" from the {_as_prefect_renders(initial_state.type)} state.",
            )
            return
        shown_name = (proposed_state.name or proposed_state.type.value).lower()
        if initial_state.state_details.pause_reschedule and context.run.deployment_id is None:
            self.reject_transition(None, f"Cannot reschedule a {shown_name} flow run without a deployment.")
            return
        if proposed_state.is_cancelling():
            return  # cancellation must reach a blocked process even after its pause expired
        pause_timeout = initial_state.state_details.pause_timeout
        if pause_timeout is not None and pause_timeout < now_utc():
            self.reject_transition(
                Failed(message=f"The flow was {shown_name} and never resumed."),
                f"The flow run {_verb(proposed_state)} has timed out and can no longer resume.",
            )

    def after_transition(
        self, initial_state: State | None, validated_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        blocking_pause = initial_state is not None and not initial_state.state_details.pause_reschedule
        rescheduled = validated_state is not None and validated_state.is_scheduled()
        if blocking_pause and rescheduled and context.api_version_at_least("0.8.4"):
            # a new attempt from the top: its pauses fire again
            update_run_policy(context.run, resuming=False, pause_keys=set(), retry_type="reschedule")
        else:
            update_run_policy(context.run, resuming=True)
