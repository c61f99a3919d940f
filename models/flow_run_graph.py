"""What ran inside a flow run: task-run dependencies and the flow run graph (version 2).

The graph's nodes are the run's task runs; a task that called a subflow is shown as that
subflow run. Edges come from the tasks' `task_inputs`: a task-run or flow-run reference is an
upstream edge, and one under `__parents__` marks the node it runs inside (encapsulating).
Edges to nodes outside the graph are dropped, and every edge list is de-duplicated.

flowruns has no artifact table (state data is stored inline), so `Graph.artifacts` and every
node's `artifacts` are empty lists.

Both functions only read: three queries at most, whatever the number of task runs.
"""

import datetime
import uuid
from collections import defaultdict
from collections.abc import Iterable
from itertools import chain

import sqlalchemy as sa
from sqlalchemy.orm import Session, aliased, joinedload, raiseload

from models import orm
from models.database import dialect_name
from models.errors import FlowRunGraphTooLarge, ObjectNotFoundError, ValidationError
from models.schemas.core import FlowRunResult, TaskInputs, TaskRunResult
from models.schemas.graph import Edge, Graph, GraphState, Node
from models.schemas.responses import DependencyResult
from models.schemas.states import State, StateType
from models.settings import get_settings

EARLIEST = datetime.datetime.min.replace(tzinfo=datetime.timezone.utc)
"""The default `since`: every node."""

ENCAPSULATING_INPUT_KEY = "__parents__"
"""The `task_inputs` key whose references are the nodes a task runs inside, not its upstreams."""

_LAST = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)


def read_task_run_dependencies(session: Session, flow_run_id: uuid.UUID) -> list[DependencyResult]:
    """Every task run of the run (newest id first) with its de-duplicated upstream references.

    Read-only. An unknown run raises ObjectNotFoundError.
    """
    _run_times(session, flow_run_id)  # raises for an unknown run
    task_runs = session.scalars(
        sa.select(orm.TaskRun)
        .where(orm.TaskRun.flow_run_id == flow_run_id)
        .order_by(orm.TaskRun.id.desc())
        .options(joinedload(orm.TaskRun.state), raiseload("*"))
    ).all()
    return [_dependency(task_run) for task_run in task_runs]


def read_flow_run_graph(
    session: Session,
    flow_run_id: uuid.UUID,
    since: datetime.datetime | str = EARLIEST,
    max_nodes: int | None = None,
) -> Graph:
    """The run's graph, keeping the nodes that ended at or after `since` (or have not ended).

    Read-only. `since` is a datetime or an ISO-8601 string with a UTC offset; `max_nodes`
    defaults to the `graph_max_nodes` setting. An unknown run raises ObjectNotFoundError; more
    nodes than `max_nodes` raise FlowRunGraphTooLarge.
    """
    since = _parse_since(since)
    limit = get_settings().graph_max_nodes if max_nodes is None else max_nodes
    start_time, end_time = _run_times(session, flow_run_id)
    nodes = [
        node
        for node in _link(_read_candidates(session, flow_run_id))
        if node.end_time is None or node.end_time >= since
    ]
    if len(nodes) > limit:
        raise FlowRunGraphTooLarge(f"The graph of flow run {flow_run_id} has more than {limit} nodes.")
    # Ordered as Prefect's query orders them: by start, then end, where the database puts a
    # missing end (last on PostgreSQL, first on SQLite).
    no_end = EARLIEST if dialect_name(session) == "sqlite" else _LAST
    nodes.sort(key=lambda node: (node.start_time, node.end_time or no_end, node.id))
    return Graph(
        start_time=start_time,
        end_time=end_time,
        root_node_ids=[node.id for node in nodes if not node.parents],
        nodes=[(node.id, node) for node in nodes],
        artifacts=[],
        states=_read_states(session, flow_run_id),
    )


def _run_times(
    session: Session, flow_run_id: uuid.UUID
) -> tuple[datetime.datetime | None, datetime.datetime | None]:
    """The run's start (its expected start until it starts) and end; ObjectNotFoundError if none."""
    run = session.execute(
        sa.select(orm.FlowRun.start_time, orm.FlowRun.expected_start_time, orm.FlowRun.end_time)
        .where(orm.FlowRun.id == flow_run_id)
    ).one_or_none()
    if run is None:
        raise ObjectNotFoundError(f"flow_run_id: no flow run with id {flow_run_id}")
    return run.start_time or run.expected_start_time, run.end_time


def _dependency(task_run: orm.TaskRun) -> DependencyResult:
    state = task_run.state
    return DependencyResult(
        id=task_run.id,
        name=task_run.name,
        upstream_dependencies=list(dict.fromkeys(chain.from_iterable(task_run.task_inputs.values()))),
        state=None if state is None else State.model_validate(state, from_attributes=True),
        expected_start_time=task_run.expected_start_time,
        start_time=task_run.start_time,
        end_time=task_run.end_time,
        total_run_time=task_run.total_run_time,
        estimated_run_time=task_run.estimated_run_time,
        untrackable_result=state is not None and state.state_details.untrackable_result,
    )


def _parse_since(since: datetime.datetime | str) -> datetime.datetime:
    if isinstance(since, str):
        try:
            since = datetime.datetime.fromisoformat(since)
        except ValueError:
            raise ValidationError(f"since: not an ISO-8601 timestamp: {since!r}") from None
    if since.tzinfo is None:
        raise ValidationError("since: timestamp must carry a UTC offset")
    return since


def _read_candidates(session: Session, flow_run_id: uuid.UUID) -> list[tuple[Node, TaskInputs]]:
    """Each task run of the run that has a start time, as a node without edges, with its inputs."""
    task, subflow = orm.TaskRun, aliased(orm.FlowRun)
    rows = session.execute(
        sa.select(
            task.id,
            task.name,
            task.state_type,
            task.start_time,
            task.expected_start_time,
            task.end_time,
            task.task_inputs,
            subflow.id.label("subflow_id"),
            subflow.name.label("subflow_name"),
            subflow.state_type.label("subflow_state_type"),
            subflow.start_time.label("subflow_start_time"),
            subflow.expected_start_time.label("subflow_expected_start_time"),
            subflow.end_time.label("subflow_end_time"),
            orm.Flow.name.label("flow_name"),
        )
        .outerjoin(subflow, subflow.parent_task_run_id == task.id)
        .outerjoin(orm.Flow, orm.Flow.id == subflow.flow_id)
        .where(
            task.flow_run_id == flow_run_id,
            sa.func.coalesce(
                subflow.start_time, subflow.expected_start_time, task.start_time, task.expected_start_time
            ).is_not(None),
        )
    ).mappings()
    return [(_bare_node(row), row["task_inputs"]) for row in rows]


def _bare_node(row: sa.RowMapping) -> Node:
    """A candidate as a node without edges: the subflow's fields win over the task's."""
    is_subflow = row["subflow_id"] is not None
    completed_at = row["expected_start_time"] if row["state_type"] == StateType.COMPLETED else None
    return Node(
        kind="flow-run" if is_subflow else "task-run",
        id=row["subflow_id"] or row["id"],
        label=f"{row['flow_name']} / {row['subflow_name']}" if is_subflow else row["name"],
        state_type=row["subflow_state_type"] or row["state_type"],
        start_time=(
            row["subflow_start_time"] or row["subflow_expected_start_time"]
            or row["start_time"] or row["expected_start_time"]
        ),
        end_time=row["subflow_end_time"] or row["end_time"] or completed_at,
        parents=[],
        children=[],
        encapsulating=[],
        artifacts=[],
    )


def _link(candidates: list[tuple[Node, TaskInputs]]) -> list[Node]:
    """The nodes with their edges: references between nodes, each ordered by the other's start."""
    nodes = {node.id: node for node, _ in candidates}
    parents: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    children: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    encapsulating: dict[uuid.UUID, list[uuid.UUID]] = defaultdict(list)
    for node, inputs in candidates:
        for key, references in inputs.items():
            for reference in references:
                if not isinstance(reference, TaskRunResult | FlowRunResult) or reference.id not in nodes:
                    continue
                if key == ENCAPSULATING_INPUT_KEY:
                    encapsulating[node.id].append(reference.id)
                else:
                    parents[node.id].append(reference.id)
                    children[reference.id].append(node.id)

    def edges(ids: Iterable[uuid.UUID]) -> list[Edge]:
        by_start = sorted(set(ids), key=lambda id_: (nodes[id_].start_time, id_))
        return [Edge(id=id_) for id_ in by_start]

    for node in nodes.values():
        node.parents = edges(parents[node.id])
        node.children = edges(children[node.id])
        node.encapsulating = edges(encapsulating[node.id])
    return list(nodes.values())


def _read_states(session: Session, flow_run_id: uuid.UUID) -> list[GraphState]:
    state = orm.FlowRunState
    rows = session.execute(
        sa.select(state.id, state.timestamp, state.type, state.name)
        .where(state.flow_run_id == flow_run_id)
        .order_by(state.timestamp)
    ).mappings()
    return [GraphState.model_validate(dict(row)) for row in rows]
