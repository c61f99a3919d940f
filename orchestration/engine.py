"""The engine: enter the policy's rules in order, write, exit them in reverse."""

import contextlib
from collections.abc import Sequence
from typing import Any

from models.schemas.responses import OrchestrationResult
from models.schemas.states import StateType
from orchestration.context import OrchestrationContext
from orchestration.rules import AnyRule

Policy = Sequence[AnyRule]
"""A policy is an ordered sequence of rule and transform classes, highest priority first."""


def compile_transition_rules(
    policy: Policy, from_state_type: StateType | None, to_state_type: StateType | None
) -> list[AnyRule]:
    """The policy's rules that guard this transition, in priority order."""
    return [
        rule for rule in policy if from_state_type in rule.FROM_STATES and to_state_type in rule.TO_STATES
    ]


def orchestrate(
    context: OrchestrationContext[Any], policy: Policy, global_policy: Policy
) -> OrchestrationResult:
    """Govern the context's transition with the policy then the global transforms; write the
    outcome. A rule's error is re-raised after every rule has exited."""
    intended = (context.initial_state_type, context.proposed_state_type)
    rules = compile_transition_rules(policy, *intended) + compile_transition_rules(global_policy, *intended)
    with contextlib.ExitStack() as stack:
        for rule in rules:
            stack.enter_context(rule(context, *intended))
        context.validate_proposed_state()
    if context.orchestration_error is not None:
        raise context.orchestration_error
    return OrchestrationResult(
        state=context.validated_state,
        status=context.response_status,
        details=context.response_details,
    )
