"""Transitions race without locks held across the rules: the write applies only if the run has not
moved on, so 8 threads proposing at once to one run, and to runs of one limited deployment, leave
a linear history with every written state accounted for, no duplicate, and exact slots."""

import random
import threading
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import database, flow_runs, orm
from models.schemas.actions import FlowRunUpdate
from models.schemas import states
from models.schemas.responses import SetStateStatus
from models.schemas.states import State, StateDetails, StateType
from orchestration import CoreFlowPolicy, service
from orchestration.service import Inbox, conflicts, set_flow_run_state
from tests.fixtures import make_deployment, make_flow_run

pytestmark = pytest.mark.postgres_only

THREADS = 8
PROPOSALS_PER_THREAD = 25

PROPOSALS: list[Callable[[], State]] = [
    lambda: states.Scheduled(scheduled_time=None),
    states.Pending,
    states.Running,
    states.Completed,
    states.Failed,
    states.Cancelling,
    states.Cancelled,
]


def race(db: str, run_ids: list[uuid.UUID], seed: int) -> tuple[list[Any], list[BaseException]]:
    """THREADS threads, each proposing PROPOSALS_PER_THREAD states to random runs of `run_ids`,
    half of them as a worker does (each statement its own commit, with an inbox record)."""
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(THREADS)

    def work(index: int) -> None:
        generator = random.Random(seed * 100 + index)
        start.wait()
        for _ in range(PROPOSALS_PER_THREAD):
            run_id = generator.choice(run_ids)
            proposal = generator.choice(PROPOSALS)()
            proposal.state_details = StateDetails(transition_id=uuid.uuid4(), scheduled_time=proposal.state_details.scheduled_time)
            as_worker = generator.random() < 0.5
            try:
                unit = database.statement_unit(db) if as_worker else database.unit_of_work(db)
                inbox = Inbox(str(uuid.uuid4()), "flow_runs.set_flow_run_state", lambda result: result.model_dump(mode="json")) if as_worker else None
                with unit as session:
                    done = set_flow_run_state(session, run_id, proposal, flow_policy=CoreFlowPolicy, inbox=inbox)
                with lock:
                    results.append((run_id, done.result))
            except Exception as error:  # noqa: BLE001 - reported by the test
                with lock:
                    errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, errors


def history(session: Session, run_id: uuid.UUID) -> list[Any]:
    table = orm.FlowRunState.__table__
    return session.execute(
        sa.select(table.c.id, table.c.timestamp, table.c.transition_id, table.c.type)
        .where(table.c.flow_run_id == run_id).order_by(table.c.timestamp)
    ).all()


def assert_linear_and_accounted_for(session: Session, run_ids: list[uuid.UUID], results: list[Any]) -> None:
    written = {
        result.state.id for _run, result in results
        if result.status == SetStateStatus.ACCEPT
        or (result.status == SetStateStatus.REJECT and result.state is not None and result.state.id is not None)
    }
    for run_id in run_ids:
        rows = history(session, run_id)
        timestamps = [row.timestamp for row in rows]
        assert timestamps == sorted(timestamps) and len(set(timestamps)) == len(timestamps)
        transition_ids = [row.transition_id for row in rows if row.transition_id is not None]
        assert len(transition_ids) == len(set(transition_ids)), "a transition id written twice"
        run = session.get(orm.FlowRun, run_id, populate_existing=True)
        assert run is not None and run.state_id == rows[-1].id, "the run points at the newest state"
        first, *later = rows
        for row in later:
            assert row.id in written, f"state {row.id} was written but no result names it"


def test_eight_threads_proposing_to_one_run_leave_a_linear_history(db: str, session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow, state=states.Scheduled(scheduled_time=None))
    session.commit()
    before = conflicts.count

    results, errors = race(db, [run.id], seed=1)

    assert errors == []
    assert len(results) == THREADS * PROPOSALS_PER_THREAD
    assert_linear_and_accounted_for(session, [run.id], results)
    assert conflicts.count > before, "eight threads on one run should have met at least one conflict"


def test_eight_threads_on_a_limited_deployment_keep_the_slots_exact(db: str, session: Session, flow: orm.Flow) -> None:
    deployment = make_deployment(session, flow, name="limited", concurrency_limit=2,
                                 concurrency_options={"collision_strategy": "ENQUEUE"})
    runs = [make_flow_run(session, flow, deployment_id=deployment.id, state=states.Scheduled(scheduled_time=None))
            for _ in range(6)]
    session.commit()
    run_ids = [run.id for run in runs]

    results, errors = race(db, run_ids, seed=2)

    assert errors == []
    assert_linear_and_accounted_for(session, run_ids, results)
    limit = session.get(orm.ConcurrencyLimit, deployment.concurrency_limit_id, populate_existing=True)
    holdings = session.execute(
        sa.select(sa.func.count()).select_from(orm.SlotHolding)
        .where(orm.SlotHolding.concurrency_limit_id == deployment.concurrency_limit_id)
    ).scalar_one()
    assert limit is not None and limit.active_slots == holdings <= 2
    holders = session.execute(sa.select(orm.SlotHolding.flow_run_id)).scalars().all()
    for run_id in holders:
        run = session.get(orm.FlowRun, run_id)
        assert run is not None and run.state is not None and State.model_validate(
            {"type": run.state.type, "name": run.state.name, "state_details": run.state.state_details}
        ).keeps_deployment_slot()


@pytest.mark.parametrize("as_worker", [True, False], ids=["worker", "in-process"])
def test_a_run_changed_under_every_optimistic_attempt_still_gets_its_transition_under_its_lock(
    db: str, session: Session, flow: orm.Flow, monkeypatch: pytest.MonkeyPatch, as_worker: bool
) -> None:
    """Right after each read, another transaction forces the run back into RUNNING (waiting at
    most 0.2 s for its lock). The first LOCKED_AFTER attempts lose to it; the next holds the run's
    lock from its read to its commit, so the meddler is the one that waits, and gives up."""
    run = make_flow_run(session, flow, state=states.Running())
    session.commit()
    meddled: list[str] = []
    real_read = service.read_flow_run_snapshot

    def read_then_meddle(*args: Any, **kwargs: Any) -> Any:
        seen = real_read(*args, **kwargs)
        meddling = meddled and meddled[-1] == "meddling"  # the meddler's own transition reads too
        if not meddling and len(meddled) <= service.LOCKED_AFTER:
            meddled.append("meddling")
            try:
                with database.unit_of_work(db) as other:
                    other.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
                    set_flow_run_state(other, run.id, states.Running(), force=True)
                meddled[-1] = "changed the run"
            except sa.exc.OperationalError as error:
                assert isinstance(error.orig, psycopg.errors.LockNotAvailable)
                meddled[-1] = "waited for the lock and gave up"
        return seen

    monkeypatch.setattr(service, "read_flow_run_snapshot", read_then_meddle)
    before = conflicts.count
    inbox = Inbox(str(uuid.uuid4()), "flow_runs.set_flow_run_state", lambda result: result.model_dump(mode="json"))
    with (database.statement_unit(db) if as_worker else database.unit_of_work(db)) as unit:
        done = set_flow_run_state(unit, run.id, states.Completed(), flow_policy=CoreFlowPolicy,
                                  inbox=inbox if as_worker else None)

    assert meddled == ["changed the run"] * service.LOCKED_AFTER + ["waited for the lock and gave up"]
    assert conflicts.count - before == service.LOCKED_AFTER
    assert done.result is not None and done.result.status == SetStateStatus.ACCEPT
    rows = history(session, run.id)
    assert [row.type for row in rows] == ["RUNNING"] * (1 + service.LOCKED_AFTER) + ["COMPLETED"]
    session.expire_all()
    assert session.get(orm.FlowRun, run.id).state_type == StateType.COMPLETED  # type: ignore[union-attr]


@pytest.mark.parametrize("as_worker", [True, False], ids=["worker", "in-process"])
def test_an_update_committed_between_the_read_and_the_write_is_not_overwritten(
    db: str, session: Session, flow: orm.Flow, monkeypatch: pytest.MonkeyPatch, as_worker: bool
) -> None:
    """Another request's `update_flow_run` commits a new retry policy after the transition read
    the run and before it writes. The run's state did not move, but the transition decided on the
    old policy and writes the policy back: the write sees the run changed, and it decides again."""
    run = make_flow_run(session, flow, state=states.Running(), empirical_policy={"retries": 1, "retry_delay": 0})
    session.commit()
    real_write = service.write_transition
    updated: list[bool] = []

    def update_then_write(*args: Any, **kwargs: Any) -> Any:
        if not updated:
            with database.unit_of_work(db) as other:
                update = FlowRunUpdate(empirical_policy={"retries": 5, "retry_delay": 30}, tags=["updated"])
                updated.append(flow_runs.update_flow_run(other, run.id, update))
        return real_write(*args, **kwargs)

    monkeypatch.setattr(service, "write_transition", update_then_write)
    before = conflicts.count
    with database.statement_unit(db) if as_worker else database.unit_of_work(db) as unit:
        done = set_flow_run_state(unit, run.id, states.Failed(), flow_policy=CoreFlowPolicy)

    assert updated == [True]
    assert conflicts.count - before == 1
    assert done.result is not None and done.result.status == SetStateStatus.REJECT
    assert done.result.state is not None and done.result.state.name == "AwaitingRetry"
    session.expire_all()
    stored = session.get(orm.FlowRun, run.id)
    assert stored is not None and stored.tags == ["updated"]
    assert (stored.empirical_policy.retries, stored.empirical_policy.retry_delay) == (5, 30)
