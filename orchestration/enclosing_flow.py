"""A task run and the flow run it belongs to: tasks run only inside a running flow, and each
start records which attempt of the flow it ran in."""

from models.errors import ObjectNotFoundError
from models.schemas.states import Paused, State, StateType
from orchestration.context import TaskOrchestrationContext
from orchestration.rules import ALL_ORCHESTRATION_STATES, OrchestrationRule

NOT_RUNNING_REASON = "The enclosing flow must be running to begin task execution."
NOT_READY_STATE_NAME = "NotReady"


class PreventRunningTasksFromStoppedFlows(OrchestrationRule[TaskOrchestrationContext]):
    """A task run of a flow run that has no state, or is not RUNNING, cannot start (ABORT). When
    the flow run is PAUSED the task run is paused too, as `NotReady`, with the flow's pause
    timeout and reschedule flag, to start once the flow resumes. A task run without a flow run
    (or whose flow run is gone) is not this rule's concern."""

    FROM_STATES = ALL_ORCHESTRATION_STATES
    TO_STATES = frozenset({StateType.RUNNING})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: TaskOrchestrationContext
    ) -> None:
        flow_run = context.flow_run()
        if flow_run is None:
            return
        if flow_run.state_type is None:
            self.abort_transition(NOT_RUNNING_REASON)
        elif flow_run.state_type == StateType.PAUSED:
            details = flow_run.state_details
            not_ready = Paused(
                name=NOT_READY_STATE_NAME,
                pause_expiration_time=details.pause_timeout if details is not None else None,
                reschedule=details.pause_reschedule if details is not None else False,
            )
            self.reject_transition(
                not_ready,
                f"The flow is paused, new tasks can execute after resuming flow run: {flow_run.id}.",
            )
        elif flow_run.state_type != StateType.RUNNING:
            self.abort_transition(NOT_RUNNING_REASON)


class UpdateFlowRunTrackerOnTasks(OrchestrationRule[TaskOrchestrationContext]):
    """Once a task run has entered RUNNING, it records its flow run's current `run_count` (the
    flow attempt it runs in) as `flow_run_run_count`."""

    FROM_STATES = ALL_ORCHESTRATION_STATES
    TO_STATES = frozenset({StateType.RUNNING})

    def after_transition(
        self, initial_state: State | None, validated_state: State | None, context: TaskOrchestrationContext
    ) -> None:
        if context.run.flow_run_id is None:
            return
        flow_run = context.flow_run()
        if flow_run is None:
            raise ObjectNotFoundError(
                f"flow_run_id: the flow run {context.run.flow_run_id} of task run {context.run.id} is gone"
            )
        context.run.flow_run_run_count = flow_run.run_count
