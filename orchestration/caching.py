"""Cached task results: a COMPLETED state with a cache key is remembered, and a task run about to
start with that key is handed the remembered result instead of running."""

from models.schemas.states import State, StateType
from models.settings import get_settings
from models.run_snapshots import CacheEntry
from orchestration.context import TaskOrchestrationContext, state_from_row
from orchestration.rules import ALL_ORCHESTRATION_STATES, OrchestrationRule

CACHED_STATE_NAME = "Cached"


class CacheRetrieval(OrchestrationRule[TaskOrchestrationContext]):
    """A start whose cache key has an unexpired cached state becomes a fresh copy of that state,
    named `Cached` (the run does not run), unless the proposal asks to refresh the cache."""

    FROM_STATES = ALL_ORCHESTRATION_STATES
    TO_STATES = frozenset({StateType.RUNNING})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: TaskOrchestrationContext
    ) -> None:
        if proposed_state is None:
            return
        details = proposed_state.state_details
        if not details.cache_key or details.refresh_cache:
            return
        cached = context.run.cached_state  # read with the run for this proposal's key
        if cached is None:
            return
        self.reject_transition(
            state_from_row(cached).fresh_copy(name=CACHED_STATE_NAME), "Retrieved state from cache"
        )


class CacheInsertion(OrchestrationRule[TaskOrchestrationContext]):
    """A written COMPLETED state with a cache key is cached until its `cache_expiration`.

    A key longer than the `max_cache_key_length` setting gets a REJECT whose replacement is the
    proposal itself, as Prefect 3.9.1 answers: the state is still written, and (the rule not
    having fizzled) still cached. The digest index keeps such a key storable.
    """

    FROM_STATES = ALL_ORCHESTRATION_STATES
    TO_STATES = frozenset({StateType.COMPLETED})

    def before_transition(
        self, initial_state: State | None, proposed_state: State | None, context: TaskOrchestrationContext
    ) -> None:
        if proposed_state is None:
            return
        longest = get_settings().max_cache_key_length
        cache_key = proposed_state.state_details.cache_key
        if cache_key and len(cache_key) > longest:
            self.reject_transition(
                proposed_state, f"Cache key exceeded maximum allowed length of {longest} characters."
            )

    def after_transition(
        self, initial_state: State | None, validated_state: State | None, context: TaskOrchestrationContext
    ) -> None:
        if validated_state is None:
            return
        details = validated_state.state_details
        if details.cache_key:
            context.effects.cache_entry = CacheEntry(details.cache_key, details.cache_expiration, validated_state.id)
