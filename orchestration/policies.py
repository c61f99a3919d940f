"""Flow-run policies: ordered lists of rule classes, highest priority first."""

from orchestration.cancelling import (
    BypassCancellingFlowRunsWithNoInfra,
    EnforceCancellingToCancelledTransition,
)
from orchestration.duplicates import PreventDuplicateTransitions
from orchestration.instrumentation import InstrumentFlowRunStateTransitions
from orchestration.pausing import HandlePausingFlows, HandleResumingPausedFlows
from orchestration.pending import PreventPendingTransitions
from orchestration.retries import RetryFailedFlows
from orchestration.scheduling import (
    CopyScheduledTime,
    EnsureOnlyScheduledFlowsMarkedLate,
    WaitForScheduledTime,
)
from orchestration.slots import (
    EnforceDeploymentConcurrencyOnLate,
    PreserveDeploymentConcurrencyLeaseId,
    ReleaseFlowConcurrencySlots,
    SecureFlowConcurrencySlots,
    SecureFlowConcurrencySlotsAtRunning,
    ValidateDeploymentConcurrencyAtRunning,
)
from orchestration.terminal import HandleFlowTerminalStateTransitions, PreventResultDataLoss

CoreFlowPolicy = (
    PreserveDeploymentConcurrencyLeaseId,
    PreventDuplicateTransitions,
    HandleFlowTerminalStateTransitions,
    EnforceCancellingToCancelledTransition,
    BypassCancellingFlowRunsWithNoInfra,
    PreventPendingTransitions,
    ValidateDeploymentConcurrencyAtRunning,
    SecureFlowConcurrencySlots,
    # Prefect's RemoveDeploymentConcurrencyLeaseForOldClientVersions: no lease store, no rule.
    EnsureOnlyScheduledFlowsMarkedLate,
    HandlePausingFlows,
    HandleResumingPausedFlows,
    CopyScheduledTime,
    WaitForScheduledTime,
    SecureFlowConcurrencySlotsAtRunning,  # ours: after every rule that may refuse the start
    RetryFailedFlows,
    InstrumentFlowRunStateTransitions,
    ReleaseFlowConcurrencySlots,
)
"""What the API applies to a proposed state (`force=False`)."""

MinimalFlowPolicy = (
    PreserveDeploymentConcurrencyLeaseId,
    PreventDuplicateTransitions,  # ours: a replayed transition id is refused even when forced
    PreventResultDataLoss,
    BypassCancellingFlowRunsWithNoInfra,
    InstrumentFlowRunStateTransitions,
    ReleaseFlowConcurrencySlots,
)
"""Forced transitions and internal callers: almost unorchestrated, but slots stay exact."""

MarkLateRunsPolicy = (
    EnsureOnlyScheduledFlowsMarkedLate,
    EnforceDeploymentConcurrencyOnLate,
    InstrumentFlowRunStateTransitions,
)
"""The late-runs service: SCHEDULED -> Late, at most once."""
