"""The transition's statements on psycopg directly (`models.driver_sql`): the same values in and out
as through SQLAlchemy's `Connection.execute`, and the same errors."""

import math
import uuid
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from models import database, driver_sql, flow_runs, orm
from models.schemas import states
from models.schemas.states import StateDetails
from models.run_snapshots import TransitionWrite
from models.transition_sql import FLOW_RUNS, read_flow_run_snapshot, write_transition
from models.types import now_utc
from orchestration import CoreFlowPolicy
from tests.fixtures import make_flow_run

pytestmark = pytest.mark.postgres_only


def _drive(session: Session, run_id: uuid.UUID) -> None:
    details = StateDetails(cache_key="k", pause_keys={"a"}, transition_id=uuid.uuid4())
    proposals = [
        states.Pending(message="queued"),
        states.Running(state_details=details),
        states.Completed(data={"rows": [1, 2.5, math.nan], "nested": {"inf": math.inf}}),
    ]
    for proposed in proposals:
        flow_runs.set_flow_run_state(session, run_id, proposed, flow_policy=CoreFlowPolicy)
        session.commit()


def _history(session: Session, run_id: uuid.UUID) -> list[tuple[Any, ...]]:
    table = orm.FlowRunState.__table__
    rows = session.execute(
        sa.select(table.c.type, table.c.name, table.c.message, table.c.state_details, table.c.data)
        .where(table.c.flow_run_id == run_id)
        .order_by(table.c.timestamp)
    ).all()
    return [(row.type, row.name, row.message, _comparable(row.state_details), row.data) for row in rows]


def _comparable(details: StateDetails) -> dict[str, Any]:
    """The details without what differs between two runs by construction (ids, schedule time)."""
    values = details.model_dump(exclude={"transition_id", "flow_run_id", "scheduled_time"})
    values["scheduled"] = details.scheduled_time is not None
    return values


def _run_columns(session: Session, run_id: uuid.UUID) -> dict[str, Any]:
    run = session.get(orm.FlowRun, run_id, populate_existing=True)
    assert run is not None
    return {
        "state_type": run.state_type,
        "state_name": run.state_name,
        "run_count": run.run_count,
        "empirical_policy": run.empirical_policy,
        "has_start": run.start_time is not None,
        "has_end": run.end_time is not None,
    }


def test_a_driven_run_is_stored_as_sqlalchemy_would_store_it(
    session: Session, flow: orm.Flow, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = make_flow_run(session, flow, state=states.Scheduled(scheduled_time=now_utc()))
    _drive(session, direct.id)
    with monkeypatch.context() as patched:
        patched.setattr(driver_sql, "supported", lambda session: False)
        through_sqlalchemy = make_flow_run(session, flow, state=states.Scheduled(scheduled_time=now_utc()))
        _drive(session, through_sqlalchemy.id)
    session.expunge_all()

    assert _history(session, direct.id) == _history(session, through_sqlalchemy.id)
    assert _history(session, direct.id)[-1][-1] == {"rows": [1, 2.5, None], "nested": {"inf": None}}
    assert _run_columns(session, direct.id) == _run_columns(session, through_sqlalchemy.id)


def test_a_run_snapshot_reads_the_same_values_both_ways(
    session: Session, flow: orm.Flow, limited_deployment: orm.Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_flow_run(session, flow, deployment_id=limited_deployment.id, state=states.Pending())
    flow_runs.set_flow_run_state(
        session, run.id, states.Running(state_details=StateDetails(cache_key="c")), flow_policy=CoreFlowPolicy
    )
    session.commit()
    session.expunge_all()
    transition_id = uuid.uuid4()

    direct, _ = read_flow_run_snapshot(session, run.id, transition_id)
    session.rollback()
    monkeypatch.setattr(driver_sql, "supported", lambda session: False)
    through_sqlalchemy, _ = read_flow_run_snapshot(session, run.id, transition_id)
    session.rollback()

    assert direct is not None and through_sqlalchemy is not None
    assert direct == through_sqlalchemy
    assert direct.state is not None and direct.state.state_details.cache_key == "c"
    assert direct.deployment_slot.holding_id is not None
    assert direct.transition_made is False


def test_a_lost_connection_is_sqlalchemy_operational_error_and_never_reused(
    db: str, flow: orm.Flow, session: Session
) -> None:
    run = make_flow_run(session, flow, state=states.Pending())
    with database.unit_of_work(db) as doomed:
        pid = doomed.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
        with database.get_engine(db).connect() as admin:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(sa_exc.OperationalError) as raised:
            read_flow_run_snapshot(doomed, run.id, None)
        assert raised.value.connection_invalidated
        assert isinstance(raised.value.orig, psycopg.OperationalError)
        doomed.rollback()

    with database.unit_of_work(db) as fresh:
        snapshot, _ = read_flow_run_snapshot(fresh, run.id, None)
    assert snapshot is not None and snapshot.state_type == states.StateType.PENDING


def test_a_constraint_violation_is_integrity_error_and_writes_nothing(
    db: str, flow: orm.Flow, session: Session
) -> None:
    run = make_flow_run(session, flow, state=states.Pending())
    existing_state_id = run.state_id
    session.expunge_all()
    state = {column: None for column in FLOW_RUNS.state.c.keys()}
    state.update(
        id=existing_state_id,
        flow_run_id=run.id,
        type=states.StateType.RUNNING,
        name="Running",
        timestamp=now_utc(),
        created=now_utc(),
        updated=now_utc(),
        state_details=StateDetails(),
    )

    with pytest.raises(sa_exc.IntegrityError):
        with database.unit_of_work(db) as writer:
            changes = {"state_type": states.StateType.RUNNING, "updated": now_utc()}
            write = TransitionWrite(run_id=run.id, seen_state_id=existing_state_id, state=state, run_changes=changes)
            write_transition(writer, FLOW_RUNS, write)

    assert session.get(orm.FlowRun, run.id, populate_existing=True).state_type == states.StateType.PENDING  # type: ignore[union-attr]
    count = session.execute(sa.select(sa.func.count()).select_from(orm.FlowRunState)).scalar_one()
    assert count == 1

