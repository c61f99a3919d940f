"""Visibility: every written flow-run state is logged (Prefect emits an event here)."""

import logging

from orchestration.context import FlowOrchestrationContext
from orchestration.rules import UniversalTransform

logger = logging.getLogger("flowruns.transitions")


class InstrumentFlowRunStateTransitions(UniversalTransform[FlowOrchestrationContext]):
    """One log record per written state: run, from, to, outcome."""

    def after_transition(self, context: FlowOrchestrationContext) -> None:
        if (
            self.nullified_transition()
            or context.validated_state is None
            or not logger.isEnabledFor(logging.INFO)
        ):
            return
        logger.info(
            "flow run %s: %s -> %s (%s)",
            context.run.id,
            context.initial_state.name if context.initial_state else None,
            context.validated_state.name,
            context.response_status.value,
            extra={
                "flow_run_id": str(context.run.id),
                "state_id": str(context.validated_state.id),
                "state_type": context.validated_state.type.value,
            },
        )
