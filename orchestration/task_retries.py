"""Task-run retries: a failing task run with retries left waits and runs again, and its later
starts are named for what they are."""

import datetime
from typing import Any

from models.schemas.core import TaskRunPolicy
from models.schemas.states import AwaitingRetry, State, StateType
from models.types import now_utc
from orchestration.context import OrchestrationContext, TaskOrchestrationContext
from orchestration.jitter import clamped_poisson_interval
from orchestration.rules import ALL_ORCHESTRATION_STATES, OrchestrationRule

AWAITING_RETRY_NAME = "AwaitingRetry"


def retry_delay_seconds(policy: TaskRunPolicy, run_count: int) -> float:
    """How long the task run waits before attempt `run_count + 1`.

    `retry_delay` is one delay, or one per attempt (the last one repeating); with a
    `retry_jitter_factor` the delay is drawn around that value (see `orchestration.jitter`).
    An empty list means no delay (Prefect fails on it with an IndexError instead).
    """
    delay = policy.retry_delay
    if isinstance(delay, list):
        base = delay[min(run_count - 1, len(delay) - 1)] if delay else 0
    else:
        base = delay or 0
    if policy.retry_jitter_factor and base > 0:
        return clamped_poisson_interval(base, policy.retry_jitter_factor)
    return base


class RetryFailedTasks(OrchestrationRule[TaskOrchestrationContext]):
    """RUNNING -> FAILED with retries left becomes AwaitingRetry, scheduled `retry_delay_seconds`
    from now, keeping the failure's message and data. `run_count` counts the starts so far, so
    `retries = N` allows N + 1 attempts. A failure marked `retriable: false` stands."""

    FROM_STATES = frozenset({StateType.RUNNING})
    TO_STATES = frozenset({StateType.FAILED})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: TaskOrchestrationContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        if proposed_state.state_details.retriable is False:
            return
        policy, run_count = context.run.empirical_policy, context.run.run_count
        if policy.retries is None or run_count > policy.retries:
            return
        delay = datetime.timedelta(seconds=retry_delay_seconds(policy, run_count))
        retry = AwaitingRetry(
            scheduled_time=now_utc() + delay, message=proposed_state.message, data=proposed_state.data
        )
        self.reject_transition(retry, "Retrying")


class RenameReruns(OrchestrationRule[OrchestrationContext[Any]]):
    """A run that has run before starts as `Retrying` when it comes from AwaitingRetry, else as
    `Rerunning`."""

    FROM_STATES = ALL_ORCHESTRATION_STATES
    TO_STATES = frozenset({StateType.RUNNING})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: OrchestrationContext[Any]
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        if context.run.run_count > 0:
            self.rename_state("Retrying" if initial_state.name == AWAITING_RETRY_NAME else "Rerunning")
