"""Bookkeeping on every transition, whatever the policy decided (Prefect's global policies).

These transforms run innermost, after the policy's rules, so they see the final proposal (a
rejection's replacement state included) and keep the run row's denormalised fields in step
with the state that is written. Each does nothing on a nullified transition.
"""

from typing import Any

from models.schemas.states import StateType
from orchestration.context import (
    FlowOrchestrationContext,
    FollowOn,
    OrchestrationContext,
    TaskOrchestrationContext,
    next_timestamp,
    update_run_policy,
)
from orchestration.rules import UniversalTransform

AnyContext = OrchestrationContext[Any]


class EnsureStateTimestampIsAfterCurrent(UniversalTransform[AnyContext]):
    """History is strictly ordered: a proposal not later than the current state moves 1 µs past
    it. (Prefect queries for exact collisions; the run lock and this bound make that needless.)"""

    def before_transition(self, context: AnyContext) -> None:
        if self.nullified_transition() or context.initial_state is None:
            return
        assert context.proposed_state is not None
        context.proposed_state.timestamp = next_timestamp(
            context.initial_state.timestamp, context.proposed_state.timestamp
        )


class SetRunStateType(UniversalTransform[AnyContext]):
    def before_transition(self, context: AnyContext) -> None:
        if self.nullified_transition():
            return
        assert context.proposed_state is not None
        context.run.state_type = context.proposed_state.type


class SetRunStateName(UniversalTransform[AnyContext]):
    def before_transition(self, context: AnyContext) -> None:
        if self.nullified_transition():
            return
        assert context.proposed_state is not None
        context.run.state_name = context.proposed_state.name


class SetRunStateTimestamp(UniversalTransform[AnyContext]):
    def before_transition(self, context: AnyContext) -> None:
        if self.nullified_transition():
            return
        assert context.proposed_state is not None
        context.run.state_timestamp = context.proposed_state.timestamp


class SetStartTime(UniversalTransform[AnyContext]):
    """The first entry into RUNNING is the start time."""

    def before_transition(self, context: AnyContext) -> None:
        if self.nullified_transition():
            return
        proposed = context.proposed_state
        assert proposed is not None
        if proposed.type == StateType.RUNNING and context.run.start_time is None:
            context.run.start_time = proposed.timestamp


class SetEndTime(UniversalTransform[AnyContext]):
    """Entering a final state sets the end time (once); leaving one for a non-final state clears
    it. A run that ends without ever starting gets its end time as start time too."""

    def before_transition(self, context: AnyContext) -> None:
        if self.nullified_transition():
            return
        proposed = context.proposed_state
        assert proposed is not None
        run = context.run
        if context.initial_state is not None and context.initial_state.is_final() and not proposed.is_final():
            run.end_time = None
        if proposed.is_final() and run.end_time is None:
            if run.start_time is None:
                run.start_time = proposed.timestamp
            run.end_time = proposed.timestamp


class IncrementRunTime(UniversalTransform[AnyContext]):
    """Time spent RUNNING accumulates when the run leaves RUNNING (or re-enters it)."""

    def before_transition(self, context: AnyContext) -> None:
        if self.nullified_transition():
            return
        initial, proposed = context.initial_state, context.proposed_state
        assert proposed is not None
        if initial is not None and initial.type == StateType.RUNNING:
            context.run.total_run_time += proposed.timestamp - initial.timestamp


class SetExpectedStartTime(UniversalTransform[AnyContext]):
    """The first state sets the expected start: its scheduled time, else its timestamp."""

    def before_transition(self, context: AnyContext) -> None:
        if self.nullified_transition() or context.run.expected_start_time is not None:
            return
        proposed = context.proposed_state
        assert proposed is not None
        if proposed.type == StateType.SCHEDULED:
            context.run.expected_start_time = proposed.state_details.scheduled_time
        else:
            context.run.expected_start_time = proposed.timestamp


class SetNextScheduledStartTime(UniversalTransform[AnyContext]):
    """A SCHEDULED run's next start is its state's scheduled time; leaving SCHEDULED clears it."""

    def before_transition(self, context: AnyContext) -> None:
        if self.nullified_transition():
            return
        proposed = context.proposed_state
        assert proposed is not None
        if context.initial_state_type == StateType.SCHEDULED:
            context.run.next_scheduled_start_time = None
        if proposed.type == StateType.SCHEDULED:
            context.run.next_scheduled_start_time = proposed.state_details.scheduled_time


class UpdateStateDetails(UniversalTransform[AnyContext]):
    """The state records whose state it is."""

    def before_transition(self, context: AnyContext) -> None:
        if self.nullified_transition():
            return
        details = context.proposed_state.state_details  # type: ignore[union-attr]
        if isinstance(context, TaskOrchestrationContext):
            details.flow_run_id = context.run.flow_run_id
            details.task_run_id = context.run.id
        else:
            details.flow_run_id = context.run.id


COMMON_GLOBAL_TRANSFORMS = (
    SetRunStateType,
    SetRunStateName,
    SetRunStateTimestamp,
    SetStartTime,
    SetEndTime,
    IncrementRunTime,
    SetExpectedStartTime,
    SetNextScheduledStartTime,
    UpdateStateDetails,
)


# -- flow runs only --------------------------------------------------------------------------


class UpdateSubflowParentTask(UniversalTransform[FlowOrchestrationContext]):
    """A subflow's parent task run mirrors each state the subflow writes (forced)."""

    def after_transition(self, context: FlowOrchestrationContext) -> None:
        if self.nullified_transition():
            return
        if context.run.parent_task_run_id is None or context.validated_state is None:
            return
        mirrored = context.validated_state.fresh_copy()
        mirrored.state_details.child_flow_run_id = context.run.id
        context.effects.follow_ons.append(FollowOn(context.run.parent_task_run_id, mirrored))


class UpdateSubflowStateDetails(UniversalTransform[FlowOrchestrationContext]):
    """A subflow's states name the parent task run that tracks it."""

    def before_transition(self, context: FlowOrchestrationContext) -> None:
        if self.nullified_transition() or context.run.parent_task_run_id is None:
            return
        context.proposed_state.state_details.task_run_id = context.run.parent_task_run_id  # type: ignore[union-attr]


class IncrementFlowRunCount(UniversalTransform[FlowOrchestrationContext]):
    """Each entry into RUNNING counts, except the one that resumes a paused run."""

    def before_transition(self, context: FlowOrchestrationContext) -> None:
        if self.nullified_transition() or context.proposed_state_type != StateType.RUNNING:
            return
        if context.api_version_at_least("0.8.4") and context.run.empirical_policy.resuming:
            return
        context.run.run_count += 1


class RemoveResumingIndicator(UniversalTransform[FlowOrchestrationContext]):
    """Running again (or finishing) ends the resume."""

    def before_transition(self, context: FlowOrchestrationContext) -> None:
        if self.nullified_transition() or not context.api_version_at_least("0.8.4"):
            return
        proposed = context.proposed_state
        assert proposed is not None
        policy = context.run.empirical_policy
        if (proposed.type == StateType.RUNNING or proposed.is_final()) and policy.resuming:
            update_run_policy(context.run, resuming=False)


GlobalFlowPolicy = (
    EnsureStateTimestampIsAfterCurrent,
    *COMMON_GLOBAL_TRANSFORMS,
    UpdateSubflowParentTask,
    UpdateSubflowStateDetails,
    IncrementFlowRunCount,
    RemoveResumingIndicator,
)
"""Prefect's GlobalFlowPolicy, in its order."""
