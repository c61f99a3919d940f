"""read_task_run_dependencies: every task run of a run with its upstream references."""

import datetime
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import flow_runs, orm, task_runs
from models.errors import ObjectNotFoundError
from models.schemas import actions
from models.schemas.core import Constant, FlowRunResult, Parameter, TaskRunResult
from models.schemas.states import StateDetails, StateType
from tests.fixtures import make_flow_run

T0 = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)


def make_task(
    session: Session,
    flow_run: orm.FlowRun,
    name: str,
    inputs: dict[str, list[Any]] | None = None,
    state: orm.TaskRunState | None = None,
) -> orm.TaskRun:
    """A task run of `flow_run`, with `state` as its current state when given."""
    row = task_runs.create_task_run(
        session,
        actions.TaskRunCreate(
            flow_run_id=flow_run.id, task_key=name, dynamic_key="0", name=name, task_inputs=inputs or {}
        ),
    )
    if state is not None:
        row.set_state(state)
        row.state_type, row.state_name, row.state_timestamp = state.type, state.name, state.timestamp
    session.commit()
    return row


def completed(**details: Any) -> orm.TaskRunState:
    return orm.TaskRunState(
        type=StateType.COMPLETED,
        name="Completed",
        timestamp=T0,
        message="done",
        state_details=StateDetails(**details),
    )


def test_every_task_run_of_the_run_newest_id_first(
    session: Session, flow: orm.Flow, flow_run: orm.FlowRun
) -> None:
    mine = [make_task(session, flow_run, f"t{i}") for i in range(4)]
    make_task(session, make_flow_run(session, flow), "someone-elses")

    result = flow_runs.read_task_run_dependencies(session, flow_run.id)

    assert [dependency.id for dependency in result] == sorted((t.id for t in mine), reverse=True)


def test_upstream_dependencies_are_deduplicated_across_input_keys(
    session: Session, flow_run: orm.FlowRun
) -> None:
    a = make_task(session, flow_run, "a")
    subflow_id = uuid.uuid4()
    b = make_task(
        session,
        flow_run,
        "b",
        inputs={
            "x": [TaskRunResult(id=a.id), Parameter(name="p"), TaskRunResult(id=a.id)],
            "y": [TaskRunResult(id=a.id), Constant(type="int"), FlowRunResult(id=subflow_id)],
            "__parents__": [TaskRunResult(id=a.id)],
            "z": [Parameter(name="p")],
        },
    )
    session.expunge_all()

    by_id = {d.id: d for d in flow_runs.read_task_run_dependencies(session, flow_run.id)}

    upstream = by_id[b.id].upstream_dependencies
    assert len(upstream) == 4
    assert set(upstream) == {
        TaskRunResult(id=a.id), Parameter(name="p"), Constant(type="int"), FlowRunResult(id=subflow_id)
    }
    assert by_id[a.id].upstream_dependencies == []


def test_untrackable_result_comes_from_the_current_state(session: Session, flow_run: orm.FlowRun) -> None:
    untrackable = make_task(session, flow_run, "untrackable", state=completed(untrackable_result=True))
    trackable = make_task(session, flow_run, "trackable", state=completed())
    stateless = make_task(session, flow_run, "stateless")
    session.expunge_all()

    by_id = {d.id: d for d in flow_runs.read_task_run_dependencies(session, flow_run.id)}

    assert by_id[untrackable.id].untrackable_result is True
    assert by_id[trackable.id].untrackable_result is False
    assert by_id[stateless.id].untrackable_result is False
    assert by_id[stateless.id].state is None


def test_dependency_carries_the_state_and_run_times(session: Session, flow_run: orm.FlowRun) -> None:
    task = make_task(session, flow_run, "timed", state=completed(cache_key="k"))
    task.expected_start_time, task.start_time = T0, T0 + datetime.timedelta(seconds=5)
    task.end_time, task.total_run_time = T0 + datetime.timedelta(seconds=65), datetime.timedelta(seconds=60)
    session.commit()
    state_id = task.state_id
    session.expunge_all()

    [dependency] = flow_runs.read_task_run_dependencies(session, flow_run.id)

    assert dependency.name == "timed"
    assert dependency.state is not None
    assert (dependency.state.id, dependency.state.type, dependency.state.message) == (
        state_id, StateType.COMPLETED, "done"
    )
    assert dependency.state.state_details.cache_key == "k"
    assert dependency.expected_start_time == T0
    assert dependency.start_time == T0 + datetime.timedelta(seconds=5)
    assert dependency.end_time == T0 + datetime.timedelta(seconds=65)
    assert dependency.total_run_time == dependency.estimated_run_time == datetime.timedelta(seconds=60)


def test_run_without_task_runs_has_no_dependencies(session: Session, flow_run: orm.FlowRun) -> None:
    assert flow_runs.read_task_run_dependencies(session, flow_run.id) == []


def test_unknown_run_is_not_found(session: Session) -> None:
    with pytest.raises(ObjectNotFoundError, match="flow_run_id"):
        flow_runs.read_task_run_dependencies(session, uuid.uuid4())


def test_dependencies_are_read_in_two_queries_whatever_the_number_of_tasks(
    session: Session, flow_run: orm.FlowRun
) -> None:
    for i in range(5):
        make_task(session, flow_run, f"t{i}", state=completed())
    session.expunge_all()
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    engine = session.get_bind()
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        result = flow_runs.read_task_run_dependencies(session, flow_run.id)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)

    assert all(d.state is not None for d in result) and len(result) == 5
    assert len(statements) == 2


def test_dependencies_serialise_with_the_reference_field_names(session: Session, flow_run: orm.FlowRun) -> None:
    a = make_task(session, flow_run, "a")
    make_task(session, flow_run, "b", inputs={"x": [TaskRunResult(id=a.id)]}, state=completed())

    wire = [d.model_dump(mode="json") for d in flow_runs.read_task_run_dependencies(session, flow_run.id)]

    b = next(d for d in wire if d["name"] == "b")
    assert b["upstream_dependencies"] == [{"input_type": "task_run", "id": str(a.id)}]
    assert b["state"]["type"] == "COMPLETED"
    assert b["total_run_time"] == 0.0
