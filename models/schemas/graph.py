"""The flow run graph (version 2): task-run and subflow nodes, their edges, the run's states."""

from typing import Any, Literal
from uuid import UUID

from models.schemas.base import DateTime, FlowrunsModel
from models.schemas.states import StateType


class GraphState(FlowrunsModel):
    """One state of the graphed run."""

    id: UUID
    timestamp: DateTime
    type: StateType
    name: str


class GraphArtifact(FlowrunsModel):
    """An artifact shown on the graph; `data` is only filled for progress artifacts."""

    id: UUID
    created: DateTime
    key: str | None
    type: str | None
    is_latest: bool
    data: Any | None


class Edge(FlowrunsModel):
    """A reference to another node of the same graph."""

    id: UUID


class Node(FlowrunsModel):
    """A task run, or the subflow run a task stands for."""

    kind: Literal["flow-run", "task-run"]
    id: UUID
    label: str
    state_type: StateType | None
    start_time: DateTime
    end_time: DateTime | None
    parents: list[Edge]
    children: list[Edge]
    encapsulating: list[Edge]
    artifacts: list[GraphArtifact]


class Graph(FlowrunsModel):
    """The graph of one flow run: nodes as (id, node) pairs in start-time order."""

    start_time: DateTime | None
    end_time: DateTime | None
    root_node_ids: list[UUID]
    nodes: list[tuple[UUID, Node]]
    artifacts: list[GraphArtifact]
    states: list[GraphState]
