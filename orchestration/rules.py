"""Rule and transform base classes: the life cycle of one rule around one transition.

A rule guards the transitions in `FROM_STATES` x `TO_STATES`. It is built with the intended
transition and entered before the proposed state is written:

- entry: if the rule is invalid (the transition is not one it guards, or an earlier rule
  already changed it) nothing happens; otherwise `before_transition` runs and decides, ending in
  one verb: return (accept), `reject_transition`, `delay_transition` or `abort_transition`;
- exit: if still invalid nothing happens; if a later rule changed the transition the rule
  "fizzled" and `cleanup` undoes its side effects; otherwise `after_transition` runs.

An exception in `before_transition` aborts the transition and is re-raised by the engine once
every rule has exited. An exception escaping elsewhere unwinds the stack with no exit hooks: the
caller's transaction rolls back, undoing every side effect at once.

Universal transforms are bookkeeping: they always enter and exit (each checks for a nullified
transition itself) and get the real context.
"""

import logging
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

from models.schemas.responses import (
    SetStateStatus,
    StateAbortDetails,
    StateRejectDetails,
    StateWaitDetails,
)
from models.schemas.states import State, StateType
from orchestration.context import OrchestrationContext

logger = logging.getLogger(__name__)

ALL_ORCHESTRATION_STATES: frozenset[StateType | None] = frozenset({*StateType, None})

ContextT = TypeVar("ContextT", bound=OrchestrationContext[Any])


class OrchestrationRule(Generic[ContextT]):
    """One decision about a transition; subclasses set FROM_STATES/TO_STATES and one hook."""

    FROM_STATES: ClassVar[frozenset[StateType | None]] = frozenset()
    TO_STATES: ClassVar[frozenset[StateType | None]] = frozenset()

    def __init__(self, context: ContextT, from_state_type: StateType | None, to_state_type: StateType | None):
        self.context = context
        self.from_state_type = from_state_type
        self.to_state_type = to_state_type
        self._invalid_on_entry: bool | None = None

    # -- hooks (override) ---------------------------------------------------------------

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: ContextT
    ) -> None:
        """Decide, before the state is written. Edit details of `proposed_state` or call a verb."""

    def after_transition(
        self, initial_state: State | None, validated_state: State | None, context: ContextT
    ) -> None:
        """Act once the state the rule agreed to is written."""

    def cleanup(self, initial_state: State | None, validated_state: State | None, context: ContextT) -> None:
        """Undo the side effects of `before_transition` after a later rule changed the outcome."""

    # -- life cycle ---------------------------------------------------------------------

    def __enter__(self) -> ContextT:
        if self.invalid():
            return self.context
        try:
            self.before_transition(*self.context.entry_context())
            self.context.rule_signature.append(type(self).__name__)
        except Exception as error:
            logger.exception("error in %s before the transition", type(self).__name__)
            self.context.proposed_state = None
            self.context.response_status = SetStateStatus.ABORT
            self.context.response_details = StateAbortDetails(
                reason=f"Aborting orchestration due to error in {type(self).__name__}: {error!r}"
            )
            self.context.orchestration_error = error
        return self.context

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None or self.invalid():
            return
        if self.fizzled():
            if self._overrides("cleanup"):
                self.cleanup(*self.context.exit_context())
        else:
            if self._overrides("after_transition"):
                self.after_transition(*self.context.exit_context())
            self.context.finalization_signature.append(type(self).__name__)

    def invalid(self) -> bool:
        """Not a transition this rule guards, or already changed by an earlier rule (sticky)."""
        if self.from_state_type not in self.FROM_STATES or self.to_state_type not in self.TO_STATES:
            self._invalid_on_entry = True
        if self._invalid_on_entry is None:
            self._invalid_on_entry = self._transition_changed()
        return self._invalid_on_entry

    @classmethod
    def _overrides(cls, hook: str) -> bool:
        """Whether this rule defines the hook (a safe copy of the context is only made for one)."""
        return getattr(cls, hook) is not getattr(OrchestrationRule, hook)

    def fizzled(self) -> bool:
        """Valid on entry, but a later rule changed the transition."""
        return not self._invalid_on_entry and self._transition_changed()

    def _transition_changed(self) -> bool:
        return (self.from_state_type, self.to_state_type) != (
            self.context.initial_state_type,
            self.context.proposed_state_type,
        )

    # -- verbs ----------------------------------------------------------------------------

    def reject_transition(self, state: State | None, reason: str) -> None:
        """Refuse the proposal: write `state` instead, or with None keep the current state."""
        self._require_unvalidated()
        if state is None:
            if self.from_state_type is None:
                raise RuntimeError("the run has no state: a rejection must provide a replacement state")
            self.to_state_type = None
        else:
            self.to_state_type = state.type  # a rule does not fizzle from its own verdict
        self.context.proposed_state = state
        self.context.response_status = SetStateStatus.REJECT
        self.context.response_details = StateRejectDetails(reason=reason)

    def delay_transition(self, delay_seconds: int, reason: str) -> None:
        """Write nothing; the caller should propose again after `delay_seconds`."""
        self._require_unvalidated()
        self.to_state_type = None
        self.context.proposed_state = None
        self.context.response_status = SetStateStatus.WAIT
        self.context.response_details = StateWaitDetails(delay_seconds=delay_seconds, reason=reason)

    def abort_transition(self, reason: str) -> None:
        """Write nothing; the caller should not try this transition again."""
        self._require_unvalidated()
        self.to_state_type = None
        self.context.proposed_state = None
        self.context.response_status = SetStateStatus.ABORT
        self.context.response_details = StateAbortDetails(reason=reason)

    def rename_state(self, name: str) -> None:
        """Rename the proposed state (its type, and so every rule's validity, is unchanged)."""
        if self.context.proposed_state is not None:
            self.context.proposed_state.name = name

    def update_context_parameters(self, key: str, value: Any) -> None:
        self.context.parameters[key] = value

    def _require_unvalidated(self) -> None:
        if self.context.validated_state is not None:
            raise RuntimeError("the transition is already validated")


class UniversalTransform(Generic[ContextT]):
    """Bookkeeping on every transition; each hook returns early on a nullified transition."""

    FROM_STATES: ClassVar[frozenset[StateType | None]] = ALL_ORCHESTRATION_STATES
    TO_STATES: ClassVar[frozenset[StateType | None]] = ALL_ORCHESTRATION_STATES

    def __init__(self, context: ContextT, from_state_type: StateType | None, to_state_type: StateType | None):
        self.context = context
        self.from_state_type = from_state_type
        self.to_state_type = to_state_type

    def before_transition(self, context: ContextT) -> None:
        """Before the state is written, with the final proposal."""

    def after_transition(self, context: ContextT) -> None:
        """After the state is written (skipped when a rule raised)."""

    def __enter__(self) -> ContextT:
        self.before_transition(self.context)
        self.context.rule_signature.append(type(self).__name__)
        return self.context

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None and self.context.orchestration_error is None:
            self.after_transition(self.context)
            self.context.finalization_signature.append(type(self).__name__)

    def nullified_transition(self) -> bool:
        return self.context.proposed_state is None


AnyRule = type[OrchestrationRule[Any]] | type[UniversalTransform[Any]]
