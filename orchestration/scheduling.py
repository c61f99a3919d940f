"""Scheduled times: when a run may start, and which runs can be marked late.

`CopyScheduledTime` and `WaitForScheduledTime` read only the states, so the flow-run and the
task-run core policies share them; marking runs late is for flow runs only.
"""

import datetime
import math
from typing import Any

from models.schemas.states import State, StateType
from models.types import now_utc
from orchestration.context import OrchestrationContext
from orchestration.rules import ALL_ORCHESTRATION_STATES, OrchestrationRule

AnyContext = OrchestrationContext[Any]


def seconds_until(moment: datetime.datetime) -> int:
    """Whole seconds from now until `moment` (the fraction rounded), negative when past."""
    delay = moment - now_utc()
    return math.floor(delay.total_seconds()) + round(delay.microseconds / 1e6)


class EnsureOnlyScheduledFlowsMarkedLate(OrchestrationRule[AnyContext]):
    """`Late` is for SCHEDULED runs that are not late yet."""

    FROM_STATES = ALL_ORCHESTRATION_STATES
    TO_STATES = frozenset({StateType.SCHEDULED})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: AnyContext
    ) -> None:
        if initial_state is None or proposed_state is None or proposed_state.name != "Late":
            return
        if not initial_state.is_scheduled():
            self.reject_transition(None, "Only scheduled flows can be marked late.")
        elif initial_state.name == "Late":
            self.reject_transition(None, "This flow run is already marked late.")


class CopyScheduledTime(OrchestrationRule[AnyContext]):
    """PENDING keeps the scheduled time of the SCHEDULED state it comes from, unless it has one."""

    FROM_STATES = frozenset({StateType.SCHEDULED})
    TO_STATES = frozenset({StateType.PENDING})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: AnyContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        if not proposed_state.state_details.scheduled_time:
            proposed_state.state_details.scheduled_time = initial_state.state_details.scheduled_time


class WaitForScheduledTime(OrchestrationRule[AnyContext]):
    """A run does not start before its scheduled time: the caller is told how long to wait."""

    FROM_STATES = frozenset({StateType.SCHEDULED, StateType.PENDING})
    TO_STATES = frozenset({StateType.RUNNING})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: AnyContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        scheduled_time = initial_state.state_details.scheduled_time
        if scheduled_time is None:
            return
        delay = seconds_until(scheduled_time)
        if delay > 0:
            self.delay_transition(delay, "Scheduled time is in the future")
