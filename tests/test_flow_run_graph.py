"""read_flow_run_graph: nodes, edges, subflows, the `since` filter and the node limit."""

import datetime
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import flow_runs, flows, orm, task_runs
from models.errors import FlowRunGraphTooLarge, ObjectNotFoundError, ValidationError
from models.schemas import actions
from models.schemas.core import FlowRunResult, Parameter, TaskRunResult
from models.schemas.graph import Edge, Graph, Node
from models.schemas.states import StateType
from models.settings import reset_settings
from tests.fixtures import make_flow_run

T0 = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)


def at(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


def make_task(
    session: Session,
    flow_run: orm.FlowRun,
    name: str,
    *,
    inputs: dict[str, list[Any]] | None = None,
    state_type: StateType | None = StateType.COMPLETED,
    start: datetime.datetime | None = None,
    end: datetime.datetime | None = None,
    expected: datetime.datetime | None = None,
) -> orm.TaskRun:
    """A task run of `flow_run` with its state and time columns set as orchestration would."""
    row = task_runs.create_task_run(
        session,
        actions.TaskRunCreate(
            flow_run_id=flow_run.id, task_key=name, dynamic_key="0", name=name, task_inputs=inputs or {}
        ),
    )
    row.state_type, row.start_time, row.end_time, row.expected_start_time = state_type, start, end, expected
    session.commit()
    return row


def ref(task: orm.TaskRun) -> TaskRunResult:
    return TaskRunResult(id=task.id)


def nodes_of(graph: Graph) -> dict[uuid.UUID, Node]:
    return dict(graph.nodes)


def ids(edges: list[Edge]) -> list[uuid.UUID]:
    return [edge.id for edge in edges]


@contextmanager
def counted_statements(session: Session) -> Iterator[list[str]]:
    """The SELECT statements the session sends while the block runs."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    engine = session.get_bind()
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


@pytest.fixture
def subflow_flow(session: Session) -> orm.Flow:
    row = flows.create_flow(session, actions.FlowCreate(name="child-flow"))
    session.commit()
    return row


def test_upstream_references_become_parents_and_children(session: Session, flow_run: orm.FlowRun) -> None:
    a = make_task(session, flow_run, "a", start=at(0), end=at(1))
    b = make_task(session, flow_run, "b", inputs={"x": [ref(a)]}, start=at(3), end=at(4))
    c = make_task(session, flow_run, "c", inputs={"x": [ref(a)]}, start=at(2), end=at(5))
    d = make_task(session, flow_run, "d", inputs={"x": [ref(b)], "y": [ref(c), Parameter(name="p")]}, start=at(6))

    graph = flow_runs.read_flow_run_graph(session, flow_run.id)

    nodes = nodes_of(graph)
    assert [node_id for node_id, _ in graph.nodes] == [a.id, c.id, b.id, d.id]
    assert all(node_id == node.id for node_id, node in graph.nodes)
    assert ids(nodes[a.id].children) == [c.id, b.id]  # by the child's start time
    assert ids(nodes[d.id].parents) == [c.id, b.id]  # by the parent's start time
    assert ids(nodes[b.id].parents) == [a.id] and ids(nodes[b.id].children) == [d.id]
    assert nodes[a.id].parents == [] and nodes[d.id].children == []
    assert graph.root_node_ids == [a.id]
    assert nodes[a.id].kind == "task-run" and nodes[a.id].label == "a"
    assert nodes[a.id].state_type == StateType.COMPLETED
    assert (nodes[a.id].start_time, nodes[a.id].end_time) == (at(0), at(1))


def test_reference_repeated_across_inputs_gives_one_edge(session: Session, flow_run: orm.FlowRun) -> None:
    a = make_task(session, flow_run, "a", start=at(0))
    b = make_task(session, flow_run, "b", inputs={"x": [ref(a), ref(a)], "y": [ref(a)]}, start=at(1))

    nodes = nodes_of(flow_runs.read_flow_run_graph(session, flow_run.id))

    assert ids(nodes[b.id].parents) == [a.id]
    assert ids(nodes[a.id].children) == [b.id]


def test_parents_input_key_marks_encapsulating_nodes(session: Session, flow_run: orm.FlowRun) -> None:
    outer = make_task(session, flow_run, "outer", start=at(0))
    upstream = make_task(session, flow_run, "upstream", start=at(1))
    inner = make_task(
        session,
        flow_run,
        "inner",
        inputs={"__parents__": [ref(outer), ref(outer)], "x": [ref(upstream)]},
        start=at(2),
    )

    graph = flow_runs.read_flow_run_graph(session, flow_run.id)

    nodes = nodes_of(graph)
    assert ids(nodes[inner.id].encapsulating) == [outer.id]
    assert ids(nodes[inner.id].parents) == [upstream.id]
    assert nodes[outer.id].children == []  # encapsulation is not an upstream edge
    assert nodes[outer.id].encapsulating == []
    assert graph.root_node_ids == [outer.id, upstream.id]


def test_task_that_called_a_subflow_is_shown_as_the_subflow_run(
    session: Session, flow: orm.Flow, flow_run: orm.FlowRun, subflow_flow: orm.Flow
) -> None:
    wrapper = make_task(session, flow_run, "call-child", state_type=StateType.RUNNING, start=at(0), end=at(9))
    child = make_flow_run(
        session,
        subflow_flow,
        name="kid",
        parent_task_run_id=wrapper.id,
        state_type=StateType.FAILED,
        start_time=at(1),
        end_time=at(5),
    )
    by_run = make_task(session, flow_run, "by-run", inputs={"x": [FlowRunResult(id=child.id)]}, start=at(6))
    by_task = make_task(session, flow_run, "by-task", inputs={"x": [ref(wrapper)]}, start=at(7))

    graph = flow_runs.read_flow_run_graph(session, flow_run.id)

    nodes = nodes_of(graph)
    assert wrapper.id not in nodes
    node = nodes[child.id]
    assert (node.kind, node.label, node.state_type) == ("flow-run", "child-flow / kid", StateType.FAILED)
    assert (node.start_time, node.end_time) == (at(1), at(5))
    assert ids(node.children) == [by_run.id]
    # The node's id is the subflow's: a reference to the wrapping task run matches no node.
    assert nodes[by_task.id].parents == []
    assert graph.root_node_ids == [child.id, by_task.id]


def test_subflow_without_times_takes_the_task_times(
    session: Session, flow_run: orm.FlowRun, subflow_flow: orm.Flow
) -> None:
    wrapper = make_task(session, flow_run, "call-child", start=at(2), end=at(4))
    child = make_flow_run(session, subflow_flow, name="kid", parent_task_run_id=wrapper.id)

    node = nodes_of(flow_runs.read_flow_run_graph(session, flow_run.id))[child.id]

    assert (node.start_time, node.end_time) == (at(2), at(4))
    assert node.state_type == StateType.COMPLETED  # the subflow has none: the task's


def test_subflow_expected_start_comes_before_the_task_start(
    session: Session, flow_run: orm.FlowRun, subflow_flow: orm.Flow
) -> None:
    wrapper = make_task(session, flow_run, "call-child", start=at(2))
    child = make_flow_run(session, subflow_flow, parent_task_run_id=wrapper.id, expected_start_time=at(3))

    node = nodes_of(flow_runs.read_flow_run_graph(session, flow_run.id))[child.id]

    assert node.start_time == at(3)


def test_expected_start_stands_in_for_missing_times(session: Session, flow_run: orm.FlowRun) -> None:
    done = make_task(session, flow_run, "done", state_type=StateType.COMPLETED, expected=at(1))
    waiting = make_task(session, flow_run, "waiting", state_type=StateType.SCHEDULED, expected=at(2))

    nodes = nodes_of(flow_runs.read_flow_run_graph(session, flow_run.id))

    assert (nodes[done.id].start_time, nodes[done.id].end_time) == (at(1), at(1))
    assert (nodes[waiting.id].start_time, nodes[waiting.id].end_time) == (at(2), None)


def test_task_without_any_start_time_is_left_out_with_its_edges(
    session: Session, flow_run: orm.FlowRun
) -> None:
    unstarted = make_task(session, flow_run, "unstarted", state_type=StateType.PENDING)
    after = make_task(session, flow_run, "after", inputs={"x": [ref(unstarted)]}, start=at(1))

    graph = flow_runs.read_flow_run_graph(session, flow_run.id)

    assert [node_id for node_id, _ in graph.nodes] == [after.id]
    assert nodes_of(graph)[after.id].parents == []
    assert graph.root_node_ids == [after.id]


def test_references_to_other_runs_tasks_are_dropped(
    session: Session, flow: orm.Flow, flow_run: orm.FlowRun
) -> None:
    elsewhere = make_task(session, make_flow_run(session, flow), "elsewhere", start=at(0))
    here = make_task(
        session, flow_run, "here", inputs={"x": [ref(elsewhere), TaskRunResult(id=uuid.uuid4())]}, start=at(1)
    )

    graph = flow_runs.read_flow_run_graph(session, flow_run.id)

    assert list(nodes_of(graph)) == [here.id]
    assert nodes_of(graph)[here.id].parents == []


def test_since_keeps_running_and_recently_ended_nodes_with_all_their_edges(
    session: Session, flow_run: orm.FlowRun
) -> None:
    old = make_task(session, flow_run, "old", start=at(0), end=at(10))
    recent = make_task(session, flow_run, "recent", inputs={"x": [ref(old)]}, start=at(11), end=at(20))
    running = make_task(
        session, flow_run, "running", inputs={"x": [ref(recent)]}, state_type=StateType.RUNNING, start=at(21)
    )

    for since in (at(20), at(20).isoformat(), "2024-05-01T12:20:00Z"):
        graph = flow_runs.read_flow_run_graph(session, flow_run.id, since=since)
        nodes = nodes_of(graph)
        assert list(nodes) == [recent.id, running.id]
        assert ids(nodes[recent.id].parents) == [old.id]  # edges span the unfiltered graph
        assert graph.root_node_ids == []

    assert list(nodes_of(flow_runs.read_flow_run_graph(session, flow_run.id, since=at(25)))) == [running.id]


@pytest.mark.parametrize("since", ["yesterday", "2024-05-01T12:00:00", datetime.datetime(2024, 5, 1)])
def test_since_must_be_an_iso_timestamp_with_offset(
    session: Session, flow_run: orm.FlowRun, since: datetime.datetime | str
) -> None:
    with pytest.raises(ValidationError, match="since"):
        flow_runs.read_flow_run_graph(session, flow_run.id, since=since)


def test_nodes_ordered_by_start_then_end_time(session: Session, flow_run: orm.FlowRun) -> None:
    unfinished = make_task(session, flow_run, "unfinished", state_type=StateType.RUNNING, start=at(1))
    late_end = make_task(session, flow_run, "late-end", start=at(1), end=at(9))
    early_end = make_task(session, flow_run, "early-end", start=at(1), end=at(2))
    first = make_task(session, flow_run, "first", start=at(0), end=at(30))

    graph = flow_runs.read_flow_run_graph(session, flow_run.id)

    # A missing end sorts where the database puts NULL, as in Prefect's query: last on PostgreSQL.
    ties = [early_end.id, late_end.id, unfinished.id]
    if session.get_bind().dialect.name == "sqlite":
        ties = [unfinished.id, early_end.id, late_end.id]
    assert [node_id for node_id, _ in graph.nodes] == [first.id, *ties]


def test_more_nodes_than_max_nodes_is_refused(session: Session, flow_run: orm.FlowRun) -> None:
    for minute in range(3):
        make_task(session, flow_run, f"t{minute}", start=at(minute), end=at(minute + 1))

    with pytest.raises(FlowRunGraphTooLarge, match="more than 2 nodes"):
        flow_runs.read_flow_run_graph(session, flow_run.id, max_nodes=2)
    assert len(flow_runs.read_flow_run_graph(session, flow_run.id, max_nodes=3).nodes) == 3
    assert len(flow_runs.read_flow_run_graph(session, flow_run.id, since=at(2), max_nodes=2).nodes) == 2


@pytest.fixture
def max_nodes_setting_of_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FLOWRUNS_GRAPH_MAX_NODES", "1")
    reset_settings()
    yield
    monkeypatch.delenv("FLOWRUNS_GRAPH_MAX_NODES")
    reset_settings()


def test_max_nodes_defaults_to_the_setting(
    session: Session, flow_run: orm.FlowRun, max_nodes_setting_of_one: None
) -> None:
    make_task(session, flow_run, "a", start=at(0))
    make_task(session, flow_run, "b", start=at(1))

    with pytest.raises(FlowRunGraphTooLarge):
        flow_runs.read_flow_run_graph(session, flow_run.id)


def test_graph_carries_run_times_and_every_state_oldest_first(
    session: Session, flow: orm.Flow
) -> None:
    run = make_flow_run(session, flow, expected_start_time=at(0), end_time=at(30))
    for minute, state_type in ((10, StateType.RUNNING), (0, StateType.SCHEDULED), (30, StateType.COMPLETED)):
        session.add(
            orm.FlowRunState(flow_run_id=run.id, type=state_type, name=state_type.value.title(), timestamp=at(minute))
        )
    session.commit()

    graph = flow_runs.read_flow_run_graph(session, run.id)

    assert (graph.start_time, graph.end_time) == (at(0), at(30))  # expected start stands in
    assert [(s.type, s.name, s.timestamp) for s in graph.states] == [
        (StateType.SCHEDULED, "Scheduled", at(0)),
        (StateType.RUNNING, "Running", at(10)),
        (StateType.COMPLETED, "Completed", at(30)),
    ]


def test_run_start_time_wins_over_expected(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow, expected_start_time=at(0), start_time=at(2))

    assert flow_runs.read_flow_run_graph(session, run.id).start_time == at(2)


def test_run_without_task_runs_has_an_empty_graph(session: Session, flow_run: orm.FlowRun) -> None:
    graph = flow_runs.read_flow_run_graph(session, flow_run.id)

    assert graph == Graph(
        start_time=None, end_time=None, root_node_ids=[], nodes=[], artifacts=[], states=[]
    )


def test_artifacts_are_always_empty(session: Session, flow_run: orm.FlowRun) -> None:
    task = make_task(session, flow_run, "a", start=at(0))

    graph = flow_runs.read_flow_run_graph(session, flow_run.id)

    assert graph.artifacts == [] and nodes_of(graph)[task.id].artifacts == []


def test_unknown_run_is_not_found(session: Session) -> None:
    with pytest.raises(ObjectNotFoundError, match="flow_run_id"):
        flow_runs.read_flow_run_graph(session, uuid.uuid4())


def test_graph_is_read_in_three_queries_whatever_its_size(
    session: Session, flow_run: orm.FlowRun, subflow_flow: orm.Flow
) -> None:
    previous = None
    for minute in range(6):
        inputs: dict[str, list[Any]] = {"x": [ref(previous)]} if previous is not None else {}
        previous = make_task(session, flow_run, f"t{minute}", inputs=inputs, start=at(minute))
        make_flow_run(session, subflow_flow, parent_task_run_id=previous.id, start_time=at(minute))
    session.expunge_all()

    with counted_statements(session) as statements:
        graph = flow_runs.read_flow_run_graph(session, flow_run.id)

    assert len(graph.nodes) == 6
    assert len(statements) == 3


def test_graph_serialises_with_the_reference_field_names(session: Session, flow_run: orm.FlowRun) -> None:
    a = make_task(session, flow_run, "a", start=at(0), end=at(1))

    wire = flow_runs.read_flow_run_graph(session, flow_run.id).model_dump(mode="json")

    assert set(wire) == {"start_time", "end_time", "root_node_ids", "nodes", "artifacts", "states"}
    node_id, node = wire["nodes"][0]
    assert node_id == str(a.id)
    assert set(node) == {
        "kind", "id", "label", "state_type", "start_time", "end_time",
        "parents", "children", "encapsulating", "artifacts",
    }
    assert node["state_type"] == "COMPLETED"
    assert Graph.model_validate(wire) == flow_runs.read_flow_run_graph(session, flow_run.id)
