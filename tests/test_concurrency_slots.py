"""Deployment concurrency slots: holding records make acquisition and release exact."""

import datetime
import threading
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from models import concurrency_slots, database, flow_runs, flows, orm
from models.schemas import actions, core, states
from models.schemas.core import FlowRunPolicy
from models.schemas.responses import SetStateStatus
from models.schemas.states import State
from models.types import now_utc
from orchestration import CoreFlowPolicy
from tests.fixtures import make_deployment, make_flow_run


def past() -> datetime.datetime:
    return now_utc() - datetime.timedelta(minutes=1)


def future() -> datetime.datetime:
    return now_utc() + datetime.timedelta(hours=1)


def limit_row(session: Session, limit_id: uuid.UUID) -> orm.ConcurrencyLimit:
    row = session.get(orm.ConcurrencyLimit, limit_id, populate_existing=True)
    assert row is not None
    return row


def holding_count(session: Session, limit_id: uuid.UUID) -> int:
    return session.execute(
        sa.select(sa.func.count())
        .select_from(orm.SlotHolding)
        .where(orm.SlotHolding.concurrency_limit_id == limit_id)
    ).scalar_one()


def assert_exact(session: Session, limit_id: uuid.UUID) -> int:
    """`active_slots == holding records <= limit`, every holder in a state that keeps a slot; the count."""
    limit = limit_row(session, limit_id)
    held = holding_count(session, limit_id)
    assert limit.active_slots == held <= limit.limit
    holders_without_a_live_process = session.execute(
        sa.select(sa.func.count())
        .select_from(orm.SlotHolding)
        .outerjoin(orm.FlowRun, orm.FlowRun.id == orm.SlotHolding.flow_run_id)
        .where(
            orm.SlotHolding.concurrency_limit_id == limit_id,
            sa.or_(orm.FlowRun.id.is_(None), ~concurrency_slots.run_keeps_its_slot()),
        )
    ).scalar_one()
    assert holders_without_a_live_process == 0
    return held


@pytest.fixture
def limit_of_two(session: Session, flow: orm.Flow) -> orm.Deployment:
    return make_deployment(
        session, flow, name="two", concurrency_limit=2, concurrency_options={"collision_strategy": "ENQUEUE"}
    )


def submitted(session: Session, flow: orm.Flow, deployment: orm.Deployment) -> orm.FlowRun:
    run = make_flow_run(session, flow, deployment_id=deployment.id)
    flow_runs.set_flow_run_state(session, run.id, states.Scheduled(scheduled_time=past()), force=True)
    result = flow_runs.set_flow_run_state(session, run.id, states.Pending(), flow_policy=CoreFlowPolicy)
    assert result.status == SetStateStatus.ACCEPT
    session.commit()
    return run


# -- the primitives -------------------------------------------------------------------------------


def test_acquire_takes_a_slot_and_records_the_holding(
    session: Session, flow: orm.Flow, limit_of_two: orm.Deployment
) -> None:
    run = make_flow_run(session, flow, deployment_id=limit_of_two.id)
    limit_id = limit_of_two.concurrency_limit_id
    assert limit_id is not None

    holding_id = concurrency_slots.acquire_slot(session, limit_id, run.id)

    assert holding_id is not None
    assert concurrency_slots.holding_for(session, run.id, limit_id) == holding_id
    assert assert_exact(session, limit_id) == 1


def test_acquire_on_a_full_limit_takes_nothing(
    session: Session, flow: orm.Flow, limit_of_two: orm.Deployment
) -> None:
    limit_id = limit_of_two.concurrency_limit_id
    assert limit_id is not None
    for _ in range(2):
        assert concurrency_slots.acquire_slot(session, limit_id, uuid.uuid4()) is not None

    assert concurrency_slots.acquire_slot(session, limit_id, uuid.uuid4()) is None
    assert limit_row(session, limit_id).active_slots == holding_count(session, limit_id) == 2


def test_acquire_on_an_inactive_limit_takes_nothing(session: Session, limit_of_two: orm.Deployment) -> None:
    limit_id = limit_of_two.concurrency_limit_id
    assert limit_id is not None
    limit_row(session, limit_id).active = False
    session.flush()

    assert concurrency_slots.acquire_slot(session, limit_id, uuid.uuid4()) is None


def test_release_is_idempotent(session: Session, limit_of_two: orm.Deployment) -> None:
    limit_id = limit_of_two.concurrency_limit_id
    assert limit_id is not None
    holding_id = concurrency_slots.acquire_slot(session, limit_id, uuid.uuid4())
    assert holding_id is not None

    assert concurrency_slots.release_slot(session, holding_id) is True
    assert concurrency_slots.release_slot(session, holding_id) is False
    assert limit_row(session, limit_id).active_slots == 0


def test_release_of_a_run_that_never_acquired_releases_nothing(
    session: Session, limit_of_two: orm.Deployment
) -> None:
    limit_id = limit_of_two.concurrency_limit_id
    assert limit_id is not None
    concurrency_slots.acquire_slot(session, limit_id, uuid.uuid4())

    assert concurrency_slots.release_flow_run_slots(session, uuid.uuid4()) == 0
    assert limit_row(session, limit_id).active_slots == 1


def test_release_still_counts_down_an_inactive_limit(session: Session, limit_of_two: orm.Deployment) -> None:
    limit_id = limit_of_two.concurrency_limit_id
    assert limit_id is not None
    run_id = uuid.uuid4()
    concurrency_slots.acquire_slot(session, limit_id, run_id)
    limit_row(session, limit_id).active = False
    session.flush()

    assert concurrency_slots.release_flow_run_slots(session, run_id) == 1
    assert limit_row(session, limit_id).active_slots == 0


# -- cleanup and delete ---------------------------------------------------------------------------


@pytest.mark.parametrize("as_", ["orm", "schema", "id"])
def test_cleanup_releases_the_slot_once(
    session: Session, flow: orm.Flow, limit_of_two: orm.Deployment, as_: str
) -> None:
    run = submitted(session, flow, limit_of_two)
    other = submitted(session, flow, limit_of_two)
    given_run: Any = {"orm": run, "schema": core.FlowRun.model_validate(run), "id": run.id}[as_]

    for _ in range(3):
        flow_runs.cleanup_flow_run_concurrency_slots(session, given_run)
    session.commit()

    limit_id = limit_of_two.concurrency_limit_id
    assert limit_id is not None
    assert limit_row(session, limit_id).active_slots == holding_count(session, limit_id) == 1
    assert concurrency_slots.holds_slot(session, other.id)


def test_cleanup_of_a_run_that_is_gone_releases_its_slot(
    session: Session, flow: orm.Flow, limit_of_two: orm.Deployment
) -> None:
    run = submitted(session, flow, limit_of_two)
    session.execute(sa.delete(orm.FlowRun).where(orm.FlowRun.id == run.id))  # e.g. a cascade from its flow
    session.expunge(run)

    flow_runs.cleanup_flow_run_concurrency_slots(session, run.id)

    limit_id = limit_of_two.concurrency_limit_id
    assert limit_id is not None
    assert limit_row(session, limit_id).active_slots == holding_count(session, limit_id) == 0


def test_deleting_an_active_run_releases_its_slot(
    session: Session, flow: orm.Flow, limit_of_two: orm.Deployment
) -> None:
    run = submitted(session, flow, limit_of_two)

    assert flow_runs.delete_flow_run(session, run.id) is True

    limit_id = limit_of_two.concurrency_limit_id
    assert limit_id is not None
    assert limit_row(session, limit_id).active_slots == holding_count(session, limit_id) == 0


# -- reconcile --------------------------------------------------------------------------------------


def test_reconcile_of_exact_counts_fixes_nothing(
    session: Session, flow: orm.Flow, limit_of_two: orm.Deployment
) -> None:
    submitted(session, flow, limit_of_two)

    report = concurrency_slots.reconcile(session)

    assert report.as_dict() == {"holdings_released": 0, "limits_corrected": 0, "slots_adjusted": 0}


def test_reconcile_releases_holdings_of_finished_and_vanished_runs(
    session: Session, flow: orm.Flow, limit_of_two: orm.Deployment
) -> None:
    finished, vanished = submitted(session, flow, limit_of_two), submitted(session, flow, limit_of_two)
    session.execute(
        sa.update(orm.FlowRun).where(orm.FlowRun.id == finished.id).values(state_type="COMPLETED")
    )
    session.execute(sa.delete(orm.FlowRun).where(orm.FlowRun.id == vanished.id))
    session.commit()

    report = concurrency_slots.reconcile(session)

    assert (report.holdings_released, report.limits_corrected, report.slots_adjusted) == (2, 1, 2)
    limit_id = limit_of_two.concurrency_limit_id
    assert limit_id is not None
    assert limit_row(session, limit_id).active_slots == 0


def test_reconcile_keeps_the_slots_of_runs_whose_process_may_be_alive(
    session: Session, flow: orm.Flow, limit_of_two: orm.Deployment
) -> None:
    """A blocking pause and an in-process retry keep their slot; a suspended or rescheduled run not."""
    kept = {
        "blocking pause": states.Paused(timeout_seconds=600),
        "in-process retry": states.AwaitingRetry(scheduled_time=future()),
    }
    dropped = {
        "suspended": states.Suspended(timeout_seconds=600),
        "rescheduled": states.Scheduled(scheduled_time=future()),
    }
    runs = {}
    for name, state in {**kept, **dropped}.items():
        deployment = make_deployment(session, flow, name=f"d-{name}", concurrency_limit=1,
                                     concurrency_options={"collision_strategy": "ENQUEUE"})
        run = runs[name] = submitted(session, flow, deployment)
        # forced, straight into the state: the holding stays as an earlier transition left it
        session.execute(sa.update(orm.FlowRun).where(orm.FlowRun.id == run.id).values(
            state_type=state.type, state_name=state.name))
        session.execute(sa.update(orm.FlowRunState).where(orm.FlowRunState.id == run.state_id).values(
            type=state.type, name=state.name, state_details=state.state_details))
    session.commit()

    report = concurrency_slots.reconcile(session)
    session.commit()

    assert report.holdings_released == len(dropped)
    assert {name for name, run in runs.items() if concurrency_slots.holds_slot(session, run.id)} == set(kept)
    for name, run in runs.items():
        assert concurrency_slots.release_slots_of_inactive_run(session, run.id) == 0, name


def test_a_late_safety_net_spares_a_run_that_may_still_be_running(
    session: Session, flow: orm.Flow, limit_of_two: orm.Deployment
) -> None:
    run = submitted(session, flow, limit_of_two)
    flow_runs.set_flow_run_state(session, run.id, states.Running(), flow_policy=CoreFlowPolicy)
    flow_runs.set_flow_run_state(session, run.id, states.Paused(timeout_seconds=600), flow_policy=CoreFlowPolicy)
    session.commit()

    assert concurrency_slots.release_slots_of_inactive_run(session, run.id) == 0
    flow_runs.set_flow_run_state(session, run.id, states.Cancelled(), force=True)
    assert concurrency_slots.holds_slot(session, run.id) is False


def test_reconcile_sets_a_drifted_count_to_its_holdings(
    session: Session, flow: orm.Flow, limit_of_two: orm.Deployment
) -> None:
    submitted(session, flow, limit_of_two)
    limit_id = limit_of_two.concurrency_limit_id
    assert limit_id is not None
    session.execute(
        sa.update(orm.ConcurrencyLimit).where(orm.ConcurrencyLimit.id == limit_id).values(active_slots=2)
    )

    report = concurrency_slots.reconcile(session)

    assert (report.holdings_released, report.limits_corrected, report.slots_adjusted) == (0, 1, 1)
    assert limit_row(session, limit_id).active_slots == 1


def test_reconcile_leaves_limits_no_deployment_uses_alone(session: Session) -> None:
    tag_limit = orm.ConcurrencyLimit(id=uuid.uuid4(), name="tag:db", limit=5, active_slots=3)
    session.add(tag_limit)
    session.flush()

    assert concurrency_slots.reconcile(session).limits_corrected == 0
    assert limit_row(session, tag_limit.id).active_slots == 3


# -- races (PostgreSQL row locks) -----------------------------------------------------------------


@pytest.mark.postgres_only
def test_racing_submissions_never_exceed_the_limit(db: str, session: Session, flow: orm.Flow) -> None:
    deployment = make_deployment(
        session,
        flow,
        name="three",
        concurrency_limit=3,
        concurrency_options={"collision_strategy": "ENQUEUE"},
    )
    workers = 12
    runs = [make_flow_run(session, flow, deployment_id=deployment.id) for _ in range(workers)]
    for run in runs:
        flow_runs.set_flow_run_state(session, run.id, states.Scheduled(scheduled_time=past()), force=True)
    session.commit()
    barrier = threading.Barrier(workers)
    outcomes: list[str | None] = []

    def submit(run_id: uuid.UUID) -> None:
        with database.unit_of_work(db) as own:
            barrier.wait()
            result = flow_runs.set_flow_run_state(own, run_id, states.Pending(), flow_policy=CoreFlowPolicy)
            outcomes.append(result.state.name if result.state else None)

    threads = [threading.Thread(target=submit, args=(run.id,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert outcomes.count("Pending") == 3
    assert outcomes.count("AwaitingConcurrencySlot") == workers - 3
    assert deployment.concurrency_limit_id is not None
    assert assert_exact(session, deployment.concurrency_limit_id) == 3


@pytest.mark.postgres_only
def test_runs_cycling_through_a_limit_never_overlap_beyond_it(
    db: str, session: Session, flow: orm.Flow
) -> None:
    deployment = make_deployment(
        session, flow, name="two", concurrency_limit=2, concurrency_options={"collision_strategy": "ENQUEUE"}
    )
    limit_id = deployment.concurrency_limit_id
    assert limit_id is not None
    workers, rounds = 8, 6
    runs = [make_flow_run(session, flow, deployment_id=deployment.id) for _ in range(workers)]
    session.commit()
    barrier = threading.Barrier(workers + 1)
    done = threading.Event()
    errors: list[BaseException] = []
    observed: list[tuple[int, int]] = []

    def cycle(run_id: uuid.UUID) -> None:
        try:
            barrier.wait()
            for _ in range(rounds):
                with database.unit_of_work(db) as own:
                    flow_runs.set_flow_run_state(
                        own, run_id, states.Scheduled(scheduled_time=past()), force=True
                    )
                for proposed in (states.Pending(), states.Running(), states.Completed()):
                    with database.unit_of_work(db) as own:
                        result = flow_runs.set_flow_run_state(
                            own, run_id, proposed, flow_policy=CoreFlowPolicy
                        )
                    if result.status != SetStateStatus.ACCEPT:
                        break
        except BaseException as error:  # surfaced by the main thread
            errors.append(error)

    def watch() -> None:
        barrier.wait()
        while not done.is_set():
            with database.unit_of_work(db) as own:
                concurrency_slots.reconcile(own)
            with database.unit_of_work(db) as own:
                held = own.execute(
                    sa.select(
                        sa.select(orm.ConcurrencyLimit.active_slots)
                        .where(orm.ConcurrencyLimit.id == limit_id)
                        .scalar_subquery(),
                        sa.select(sa.func.count())
                        .where(orm.SlotHolding.concurrency_limit_id == limit_id)
                        .scalar_subquery(),
                    )
                ).one()
                observed.append((held[0], held[1]))

    threads = [threading.Thread(target=cycle, args=(run.id,)) for run in runs]
    watcher = threading.Thread(target=watch)
    for thread in [*threads, watcher]:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    watcher.join()

    assert not errors, errors
    assert observed and all(active == held <= 2 for active, held in observed)
    assert assert_exact(session, limit_id) == 0


# -- property: any sequence of operations keeps the counts exact ---------------------------------

PROPOSALS: dict[str, Any] = {
    "scheduled": lambda: states.Scheduled(scheduled_time=past()),
    "awaiting_retry": lambda: states.AwaitingRetry(scheduled_time=past()),
    "pending": states.Pending,
    "submitting": states.Submitting,
    "running": states.Running,
    "paused": lambda: states.Paused(timeout_seconds=600),
    "cancelling": states.Cancelling,
    "cancelled": states.Cancelled,
    "completed": states.Completed,
    "failed": states.Failed,
    "crashed": states.Crashed,
}
operation = st.one_of(
    st.tuples(st.sampled_from(["propose", "force"]), st.integers(0, 3), st.sampled_from(sorted(PROPOSALS))),
    st.tuples(st.sampled_from(["delete", "cleanup"]), st.integers(0, 3), st.just("")),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    limit=st.integers(1, 3),
    strategy=st.sampled_from(["ENQUEUE", "CANCEL_NEW"]),
    operations=st.lists(operation, min_size=1, max_size=25),
)
def test_any_sequence_of_transitions_deletes_and_cleanups_keeps_slots_exact(
    session: Session, limit: int, strategy: str, operations: list[tuple[str, int, str]]
) -> None:
    try:
        flow = flows.create_flow(session, actions.FlowCreate(name=f"prop-{uuid.uuid4().hex}"))
        deployment = make_deployment_in(session, flow, limit, strategy)
        limit_id = deployment.concurrency_limit_id
        assert limit_id is not None
        runs: list[uuid.UUID | None] = [
            flow_runs.create_flow_run(
                session,
                core.FlowRun(
                    flow_id=flow.id, deployment_id=deployment.id, empirical_policy=FlowRunPolicy(retries=1)
                ),
            ).id
            for _ in range(4)
        ]
        for kind, index, proposal in operations:
            run_id = runs[index]
            if run_id is None:
                continue
            if kind == "propose":
                apply(session, run_id, PROPOSALS[proposal](), force=False)
            elif kind == "force":
                apply(session, run_id, PROPOSALS[proposal](), force=True)
            elif kind == "delete":
                flow_runs.delete_flow_run(session, run_id)
                runs[index] = None
            else:
                flow_runs.cleanup_flow_run_concurrency_slots(session, run_id)
            assert_exact(session, limit_id)
    finally:
        session.rollback()


def make_deployment_in(session: Session, flow: orm.Flow, limit: int, strategy: str) -> orm.Deployment:
    from models import deployments

    return deployments.create_deployment(
        session,
        actions.DeploymentCreate(
            name="prop",
            flow_id=flow.id,
            concurrency_limit=limit,
            concurrency_options={"collision_strategy": strategy},
        ),
    )


def apply(session: Session, run_id: uuid.UUID, state: State, force: bool) -> None:
    flow_runs.set_flow_run_state(
        session, run_id, state, force=force, flow_policy=None if force else CoreFlowPolicy
    )
