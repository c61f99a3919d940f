"""Retries: a failing run with retries left is rescheduled instead of failed."""

import datetime

from models.schemas.states import AwaitingRetry, State, StateType
from models.types import now_utc
from orchestration.context import FlowOrchestrationContext, update_run_policy
from orchestration.rules import OrchestrationRule


class RetryFailedFlows(OrchestrationRule[FlowOrchestrationContext]):
    """RUNNING -> FAILED with retries left becomes AwaitingRetry at now + `retry_delay`, keeping
    the failure's message and data. `run_count` counts entries into RUNNING, so `retries = N`
    allows N + 1 attempts. Once exhausted the failure stands."""

    FROM_STATES = frozenset({StateType.RUNNING})
    TO_STATES = frozenset({StateType.FAILED})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        run, policy = context.run, context.run.empirical_policy
        if policy.retries is None or run.run_count > policy.retries:
            update_run_policy(run, retry_type=None)
            return
        retry_at = now_utc() + datetime.timedelta(seconds=policy.retry_delay or 0)
        if not context.api_version_at_least("0.8.3"):
            # clients older than api 0.8.3 retry the flow's failed task runs through the server
            context.effects.reschedule_failed_task_runs_at = retry_at
        if context.api_version_at_least("0.8.4"):
            update_run_policy(run, resuming=False, pause_keys=set(), retry_type="in_process")
        retry = AwaitingRetry(
            scheduled_time=retry_at, message=proposed_state.message, data=proposed_state.data
        )
        # The retry runs in the same process, which keeps the slot: the state says which one.
        retry.state_details.deployment_concurrency_lease_id = (
            initial_state.state_details.deployment_concurrency_lease_id
        )
        self.reject_transition(retry, "Retrying")

