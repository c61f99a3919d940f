"""Deployment concurrency: securing a slot before a run is submitted or starts, and releasing it.

The slot a run holds is its `SlotHolding` row (see `models.concurrency_slots`); its id is the
lease id put on the run's states. Rules decide on the limit as the run's snapshot read it and
record a slot to take or give back on the context's effects; the transition's write takes or
gives it back in the statement that writes the state, so they happen together or not at all. A
rule that decided to take one and is then overruled by a later rule withdraws it in `cleanup`.

A run keeps its slot for as long as its process may be alive: PENDING, RUNNING, CANCELLING, a
blocking pause and an in-process retry's AwaitingRetry (`keeps_deployment_slot`). So resuming a
blocking pause and an in-process retry never need a new slot and are never bounced; every other
state gives it back, an AwaitingRetry the run proposes itself included.

Deviations from Prefect, on purpose: there is no lease store (nothing expires or is renewed, so
client versions do not matter for leases); a run entering RUNNING without a slot must secure
one, waiting (ENQUEUE) or cancelled (CANCEL_NEW) when none is free; release deletes the run's
holding and never decrements blindly.
"""

import datetime
import uuid

from models.schemas.core import ConcurrencyLimitStrategy
from models.schemas.responses import SetStateStatus
from models.schemas.states import (
    ACTIVE_STATES,
    AWAITING_RETRY,
    AwaitingConcurrencySlot,
    Cancelled,
    State,
    StateType,
)
from models.settings import get_settings
from models.types import now_utc
from orchestration.context import DeploymentSlot, FlowOrchestrationContext
from orchestration.rules import ALL_ORCHESTRATION_STATES, OrchestrationRule, UniversalTransform

WORKER_VERSIONS_THAT_MANAGE_DEPLOYMENT_CONCURRENCY = frozenset(
    {"3.0.0rc20", "3.0.0", "3.0.1", "3.0.2", "3.0.3"}
)
LIMIT_REACHED = "Deployment concurrency limit reached."


def collision_outcome(slot: DeploymentSlot) -> State:
    """What a run gets when its deployment's limit is full: wait in line (ENQUEUE, the default)
    or be cancelled (CANCEL_NEW)."""
    if slot.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW:
        return Cancelled(message=LIMIT_REACHED)
    wait = datetime.timedelta(seconds=get_settings().concurrency_slot_wait_seconds)
    return AwaitingConcurrencySlot(scheduled_time=now_utc() + wait)


class PreserveDeploymentConcurrencyLeaseId(UniversalTransform[FlowOrchestrationContext]):
    """Clients send an explicit null lease id; the current state's id is carried forward."""

    def before_transition(self, context: FlowOrchestrationContext) -> None:
        if context.initial_state is None or context.proposed_state is None:
            return
        lease_id = context.initial_state.state_details.deployment_concurrency_lease_id
        details = context.proposed_state.state_details
        if lease_id is not None and details.deployment_concurrency_lease_id is None:
            details.deployment_concurrency_lease_id = lease_id


class _SlotRule(OrchestrationRule[FlowOrchestrationContext]):
    """A rule that may take a slot: it gives the slot back if a later rule overrules it."""

    acquires: bool = False

    @staticmethod
    def server_manages_slots(context: FlowOrchestrationContext) -> bool:
        """The run has a deployment, and the client is not a worker that manages its slots itself."""
        return (
            context.run.deployment_id is not None
            and context.client_version not in WORKER_VERSIONS_THAT_MANAGE_DEPLOYMENT_CONCURRENCY
        )

    def secure_slot(self, proposed_state: State, context: FlowOrchestrationContext) -> bool | None:
        """Make sure the run holds a slot of its deployment's limit, stamping the holding id on
        the proposal. True: holds one, or one is free and taken with the write; False: none
        free; None: the deployment has no limit. (Should the last free slot go to another run
        before the write, the write does not apply and the transition is decided again.)"""
        slot = context.deployment_slot()
        if slot.limit_id is None:
            return None
        holding_id = slot.holding_id
        if holding_id is None:
            if not slot.has_free_slot:
                return False
            holding_id = uuid.uuid4()
            context.effects.acquire_limit_id, context.effects.holding_id = slot.limit_id, holding_id
            self.acquires = True
        proposed_state.state_details.deployment_concurrency_lease_id = holding_id
        return True

    def cleanup(
        self, initial_state: State | None, validated_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if self.acquires:
            context.effects.acquire_limit_id = context.effects.holding_id = None
            self.acquires = False


class SecureFlowConcurrencySlots(_SlotRule):
    """A deployment run is submitted (-> PENDING) only with a slot of its deployment's limit.
    When none is free: ENQUEUE waits as AwaitingConcurrencySlot, CANCEL_NEW cancels the run.
    A missing deployment aborts (Prefect's behaviour, kept: such a run cannot be submitted)."""

    FROM_STATES = ALL_ORCHESTRATION_STATES - ACTIVE_STATES
    TO_STATES = frozenset({StateType.PENDING})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if proposed_state is None or not self.server_manages_slots(context):
            return
        slot = context.deployment_slot()
        if not slot.found:
            self.abort_transition("Deployment not found.")
            return
        if slot.limit_id is not None and slot.limit == 0:
            self.abort_transition(
                "The deployment concurrency limit is 0. The flow will deadlock if submitted again."
            )
            return
        if self.secure_slot(proposed_state, context) is False:
            self.reject_transition(collision_outcome(slot), LIMIT_REACHED)


class ValidateDeploymentConcurrencyAtRunning(_SlotRule):
    """PENDING -> RUNNING keeps the slot taken at submission. A run that reached PENDING without
    one (created or forced into PENDING, or freed by a producer's cleanup) must take one now; when
    none is free the collision strategy applies (ENQUEUE waits, CANCEL_NEW cancels)."""

    FROM_STATES = frozenset({StateType.PENDING})
    TO_STATES = frozenset({StateType.RUNNING})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if initial_state is None or proposed_state is None:
            return
        lease_id = initial_state.state_details.deployment_concurrency_lease_id
        proposed_state.state_details.deployment_concurrency_lease_id = lease_id
        if self.server_manages_slots(context) and self.secure_slot(proposed_state, context) is False:
            self.reject_transition(collision_outcome(context.deployment_slot()), LIMIT_REACHED)


class SecureFlowConcurrencySlotsAtRunning(_SlotRule):
    """A deployment run starting (-> RUNNING) from any other state than PENDING, RUNNING or
    CANCELLING must hold a slot. An in-process retry (AwaitingRetry) and a blocking pause kept
    theirs, so they start at once; a rerun, or a run whose slot a producer's cleanup freed, must
    take one, and when none is free the collision strategy applies, as at submission. (Prefect
    lets such runs start outside the limit.)"""

    FROM_STATES = ALL_ORCHESTRATION_STATES - ACTIVE_STATES
    TO_STATES = frozenset({StateType.RUNNING})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if proposed_state is None or not self.server_manages_slots(context):
            return
        if self.secure_slot(proposed_state, context) is False:
            self.reject_transition(collision_outcome(context.deployment_slot()), LIMIT_REACHED)


class ReleaseFlowConcurrencySlots(UniversalTransform[FlowOrchestrationContext]):
    """Leaving a state that keeps the slot for one that does not, as finally decided, gives back
    the slot the run holds, if it holds one: a terminal state, a `Suspended` pause, any SCHEDULED
    state but an in-process retry. Runs under every flow policy, forced transitions included.

    Only the AwaitingRetry that `RetryFailedFlows` puts in place of a failure is an in-process
    retry; one proposed as such (a process rescheduling itself as it stops) leaves the process,
    and gives the slot back, as in Prefect."""

    def after_transition(self, context: FlowOrchestrationContext) -> None:
        if self.nullified_transition() or context.run.deployment_id is None:
            return
        initial, final = context.initial_state, context.proposed_state
        if initial is None or final is None or not initial.keeps_deployment_slot():
            return
        if final.keeps_deployment_slot() and not _proposed_retry(final, context):
            return
        if not context.holds_no_slot():  # known from the read: a DELETE would find nothing
            context.effects.release_slots = True


def _proposed_retry(final: State, context: FlowOrchestrationContext) -> bool:
    """An AwaitingRetry that was proposed, not put in place of a failure by a rule."""
    return final.name == AWAITING_RETRY and context.response_status != SetStateStatus.REJECT


class EnforceDeploymentConcurrencyOnLate(OrchestrationRule[FlowOrchestrationContext]):
    """A run about to be marked Late on a full CANCEL_NEW deployment is cancelled instead."""

    FROM_STATES = frozenset({StateType.SCHEDULED})
    TO_STATES = frozenset({StateType.SCHEDULED})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: FlowOrchestrationContext
    ) -> None:
        if initial_state is None or proposed_state is None or proposed_state.name != "Late":
            return
        if context.run.deployment_id is None:
            return
        slot = context.deployment_slot()
        if slot.limit_id is None or slot.concurrency_options is None:
            return
        if slot.collision_strategy != ConcurrencyLimitStrategy.CANCEL_NEW:
            return
        if slot.active_slots >= slot.limit:
            self.reject_transition(
                Cancelled(message=LIMIT_REACHED),
                "Deployment concurrency limit is full and uses the CANCEL_NEW strategy.",
            )
