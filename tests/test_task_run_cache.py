"""The core task policy's cache rules: CacheInsertion remembers COMPLETED states by cache key,
CacheRetrieval hands them to later starts as `Cached`."""

import hashlib
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.schemas import states
from models.schemas.responses import SetStateStatus
from models.schemas.states import StateType
from models.settings import reset_settings
from models.task_run_state_cache import cache_key_digest
from models.types import now_utc
from tests.task_run_helpers import (
    PERSISTED,
    completed,
    flow_run_in,
    future,
    history,
    lock_path,  # noqa: F401
    past,
    propose,
    running,
    stored,
    task_run_in,
)

pytestmark = pytest.mark.usefixtures("lock_path")


@pytest.fixture
def flow_run(session: Session, flow: orm.Flow) -> orm.FlowRun:
    return flow_run_in(session, flow, states.Pending(), states.Running())


def finish(session: Session, flow_run: orm.FlowRun, key: str, **details: object) -> orm.TaskRun:
    """A task run that ran and completed with a persisted result under `key`."""
    task_run = task_run_in(session, flow_run, key=f"producer-{uuid.uuid4().hex[:8]}")
    assert propose(session, task_run, states.Running()).status == SetStateStatus.ACCEPT
    result = propose(session, task_run, completed(PERSISTED, cache_key=key, **details))
    assert result.status == SetStateStatus.ACCEPT
    return task_run


def cache_rows(session: Session) -> list[orm.TaskRunStateCache]:
    return list(session.execute(sa.select(orm.TaskRunStateCache).order_by(orm.TaskRunStateCache.created)).scalars())


@pytest.fixture
def short_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    monkeypatch.setenv("FLOWRUNS_MAX_CACHE_KEY_LENGTH", "10")
    reset_settings()
    yield 10
    monkeypatch.undo()
    reset_settings()


# -- CacheInsertion -----------------------------------------------------------------------------


def test_completed_state_with_a_cache_key_is_cached_until_its_expiration(
    session: Session, flow_run: orm.FlowRun
) -> None:
    expires = future()

    producer = finish(session, flow_run, "key-1", cache_expiration=expires)

    [row] = cache_rows(session)
    assert (row.cache_key, row.cache_expiration, row.task_run_state_id) == ("key-1", expires, producer.state_id)
    assert row.cache_key_digest == hashlib.sha256(b"key-1").hexdigest() == cache_key_digest("key-1")


def test_completed_state_without_a_cache_key_is_not_cached(session: Session, flow_run: orm.FlowRun) -> None:
    task_run = task_run_in(session, flow_run)
    propose(session, task_run, states.Running())

    assert propose(session, task_run, completed(PERSISTED)).status == SetStateStatus.ACCEPT
    assert cache_rows(session) == []


def test_over_long_cache_key_is_rejected_yet_written_as_proposed(
    session: Session, flow_run: orm.FlowRun, short_keys: int
) -> None:
    task_run = task_run_in(session, flow_run)
    propose(session, task_run, states.Running())

    result = propose(session, task_run, completed(PERSISTED, cache_key="k" * (short_keys + 1)))

    assert result.status == SetStateStatus.REJECT
    assert result.details.reason == "Cache key exceeded maximum allowed length of 10 characters."
    assert (result.state.type, result.state.name, result.state.data) == (StateType.COMPLETED, "Completed", PERSISTED)
    assert stored(session, task_run).state_type == StateType.COMPLETED
    assert history(session, task_run) == ["Pending", "Running", "Completed"]
    # As Prefect 3.9.1: the rule rejected with the proposal itself, so it did not fizzle, and cached it.
    assert [row.cache_key for row in cache_rows(session)] == ["k" * 11]


def test_cache_key_of_the_maximum_length_is_accepted(
    session: Session, flow_run: orm.FlowRun, short_keys: int
) -> None:
    task_run = task_run_in(session, flow_run)
    propose(session, task_run, states.Running())

    result = propose(session, task_run, completed(PERSISTED, cache_key="k" * short_keys))

    assert result.status == SetStateStatus.ACCEPT


def test_maximum_length_key_of_four_byte_characters_is_cached_and_found(
    session: Session, flow_run: orm.FlowRun
) -> None:
    key = "\U0001d11e" * 2000  # 8,000 bytes of UTF-8: more than a btree index entry may hold
    finish(session, flow_run, key)
    consumer = task_run_in(session, flow_run, key="consumer")

    result = propose(session, consumer, running(cache_key=key))

    assert (result.status, result.state.name) == (SetStateStatus.REJECT, "Cached")
    assert [len(row.cache_key) for row in cache_rows(session)] == [2000]


# -- CacheRetrieval -----------------------------------------------------------------------------


@pytest.mark.parametrize("expiration", [None, future()], ids=["never expires", "expires later"])
def test_start_with_a_cached_key_gets_the_cached_result_named_cached(
    session: Session, flow_run: orm.FlowRun, expiration: object
) -> None:
    producer = finish(session, flow_run, "same-inputs", cache_expiration=expiration)
    consumer = task_run_in(session, flow_run, key="consumer")

    result = propose(session, consumer, running(cache_key="same-inputs"))

    assert (result.status, result.details.reason) == (SetStateStatus.REJECT, "Retrieved state from cache")
    assert (result.state.type, result.state.name, result.state.data) == (StateType.COMPLETED, "Cached", PERSISTED)
    assert result.state.id != producer.state_id
    assert result.state.state_details.task_run_id == consumer.id
    row = stored(session, consumer)
    assert (row.state_type, row.state_name, row.run_count, row.flow_run_run_count) == (
        StateType.COMPLETED, "Cached", 0, 0,
    )
    assert row.end_time == result.state.timestamp
    assert history(session, consumer) == ["Pending", "Cached"]
    assert len(cache_rows(session)) == 1  # a start is never cached: only a COMPLETED proposal


def test_expired_cache_entry_is_not_used(session: Session, flow_run: orm.FlowRun) -> None:
    finish(session, flow_run, "stale", cache_expiration=past(1))
    consumer = task_run_in(session, flow_run, key="consumer")

    result = propose(session, consumer, running(cache_key="stale"))

    assert (result.status, result.state.type) == (SetStateStatus.ACCEPT, StateType.RUNNING)
    assert result.state.name == "Running"
    assert stored(session, consumer).run_count == 1


def test_refresh_cache_runs_anyway_and_its_result_is_the_newest_entry(
    session: Session, flow_run: orm.FlowRun
) -> None:
    finish(session, flow_run, "shared")
    refresher = task_run_in(session, flow_run, key="refresher")

    result = propose(session, refresher, running(cache_key="shared", refresh_cache=True))

    assert (result.status, result.state.name) == (SetStateStatus.ACCEPT, "Running")
    fresh = {"type": "reference", "storage_key": "s3://bucket/fresh"}
    propose(session, refresher, completed(fresh, cache_key="shared"))
    consumer = task_run_in(session, flow_run, key="consumer")
    cached = propose(session, consumer, running(cache_key="shared"))
    assert (cached.state.name, cached.state.data) == ("Cached", fresh)


def test_only_an_entry_with_the_same_key_is_a_hit(session: Session, flow_run: orm.FlowRun) -> None:
    producer = finish(session, flow_run, "alpha")
    now = now_utc()
    # A digest collision: an entry for "alpha" filed under beta's digest must not answer for "beta".
    session.add(
        orm.TaskRunStateCache(
            created=now, updated=now, cache_key="alpha", cache_key_digest=cache_key_digest("beta"),
            task_run_state_id=producer.state_id,
        )
    )
    session.commit()
    consumer = task_run_in(session, flow_run, key="consumer")

    assert propose(session, consumer, running(cache_key="beta")).state.name == "Running"
    other = task_run_in(session, flow_run, key="other")
    assert propose(session, other, running(cache_key="alpha")).state.name == "Cached"


def test_newest_entry_whose_state_is_gone_is_a_miss(session: Session, flow_run: orm.FlowRun) -> None:
    finish(session, flow_run, "kept")
    gone = finish(session, flow_run, "kept")
    session.execute(sa.delete(orm.TaskRun).where(orm.TaskRun.id == gone.id))
    session.commit()
    session.expunge_all()
    consumer = task_run_in(session, flow_run, key="consumer")

    result = propose(session, consumer, running(cache_key="kept"))

    assert (result.status, result.state.name) == (SetStateStatus.ACCEPT, "Running")


def test_cached_result_is_handed_out_even_to_a_completed_task(session: Session, flow_run: orm.FlowRun) -> None:
    finish(session, flow_run, "again")
    task_run = task_run_in(session, flow_run, key="done")
    propose(session, task_run, states.Running())
    propose(session, task_run, completed(PERSISTED))

    result = propose(session, task_run, running(cache_key="again"))

    # CacheRetrieval comes before HandleTaskTerminalStateTransitions, as in Prefect
    assert (result.status, result.details.reason, result.state.name) == (
        SetStateStatus.REJECT, "Retrieved state from cache", "Cached",
    )
