"""The engine: enter the policy's rules in order, write, exit them in reverse."""

import functools
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
    return list(_guarding_rules(tuple(policy), from_state_type, to_state_type))


@functools.lru_cache(maxsize=1024)
def _guarding_rules(
    policy: tuple[AnyRule, ...], from_state_type: StateType | None, to_state_type: StateType | None
) -> tuple[AnyRule, ...]:
    # A policy's rules and their guarded transitions are fixed, so each (policy, from, to) is
    # filtered once per process.
    return tuple(
        rule for rule in policy if from_state_type in rule.FROM_STATES and to_state_type in rule.TO_STATES
    )


def orchestrate(
    context: OrchestrationContext[Any], policy: Policy, global_policy: Policy
) -> OrchestrationResult:
    """Govern the context's transition with the policy then the global transforms; the outcome
    (what to write is on the context). A rule's error is re-raised after every rule has exited."""
    intended = (context.initial_state_type, context.proposed_state_type)
    guarding = _guarding_rules(tuple(policy), *intended) + _guarding_rules(tuple(global_policy), *intended)
    rules = [rule(context, *intended) for rule in guarding]
    _run_rules(rules, context)
    if context.orchestration_error is not None:
        raise context.orchestration_error
    return OrchestrationResult(
        state=context.validated_state,
        status=context.response_status,
        details=context.response_details,
    )


def _run_rules(rules: list[Any], context: OrchestrationContext[Any]) -> None:
    """Enter every rule, validate the proposal, exit the rules in reverse order.

    The same protocol as nesting them in `with` blocks (an `ExitStack`), without its per-rule
    overhead: an exception unwinds through the entered rules' `__exit__` (which skip their hooks)
    and is re-raised; an exception raised by an `__exit__` is passed on to the remaining ones.
    """
    entered = 0
    error: BaseException | None = None
    try:
        for rule in rules:
            rule.__enter__()
            entered += 1
        context.validate_proposed_state()
    except BaseException as raised:
        error = raised
    for rule in reversed(rules[:entered]):
        try:
            if error is None:
                rule.__exit__(None, None, None)
            elif rule.__exit__(type(error), error, error.__traceback__):
                error = None  # suppressed, as `with` would
        except BaseException as raised:
            error = raised
    if error is not None:
        raise error
