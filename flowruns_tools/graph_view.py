"""A run graph one can look at: `flowruns graph RUN_ID --format text|mermaid|dot`.

Renders the `Graph` that `read_flow_run_graph` returns (over the wire or in-process): task runs
and subflows as nodes with their state, edges from each node to the ones it waited on.
"""

import json
from collections.abc import Callable
from uuid import UUID

from models.schemas.graph import Graph, Node

FORMATS = ("text", "mermaid", "dot")


def render(graph: Graph, fmt: str, title: str = "flow run") -> str:
    """The graph in one of `FORMATS`."""
    renderers: dict[str, Callable[[Graph, str], str]] = {"text": as_text, "mermaid": as_mermaid, "dot": as_dot}
    return renderers[fmt](graph, title)


def _state(node: Node) -> str:
    return node.state_type.value if node.state_type is not None else "NO STATE"


def _edges(graph: Graph) -> list[tuple[UUID, UUID]]:
    """(upstream, downstream) pairs between nodes of the graph, each once, in node order."""
    known = {node_id for node_id, _node in graph.nodes}
    seen: set[tuple[UUID, UUID]] = set()
    edges = []
    for node_id, node in graph.nodes:
        for parent in node.parents:
            pair = (parent.id, node_id)
            if parent.id in known and pair not in seen:
                seen.add(pair)
                edges.append(pair)
    return edges


def as_text(graph: Graph, title: str) -> str:
    """One line per node in start order, with the nodes it waited on."""
    labels = {node_id: node.label for node_id, node in graph.nodes}
    states = " → ".join(state.name for state in graph.states) or "no states"
    lines = [f"{title}: {len(graph.nodes)} nodes; states {states}"]
    width = max((len(node.label) for _id, node in graph.nodes), default=0)
    for node_id, node in graph.nodes:
        waits_on = ", ".join(labels[parent.id] for parent in node.parents if parent.id in labels)
        kind = "subflow" if node.kind == "flow-run" else "task"
        line = f"  {node.label.ljust(width)}  {_state(node):<10}  {kind}"
        lines.append(f"{line}  ← {waits_on}" if waits_on else line)
    return "\n".join(lines)


def as_mermaid(graph: Graph, title: str) -> str:
    """A Mermaid flowchart (GitHub and most Markdown viewers draw it)."""
    names = {node_id: f"n{index}" for index, (node_id, _node) in enumerate(graph.nodes)}
    lines = ["flowchart LR", f"  %% {title}"]
    for node_id, node in graph.nodes:
        text = f"{node.label}<br/>{_state(node)}".replace('"', "#quot;")
        shape = f'[["{text}"]]' if node.kind == "flow-run" else f'["{text}"]'
        lines.append(f"  {names[node_id]}{shape}")
    lines += [f"  {names[upstream]} --> {names[downstream]}" for upstream, downstream in _edges(graph)]
    return "\n".join(lines)


def as_dot(graph: Graph, title: str) -> str:
    """Graphviz DOT (`dot -Tsvg`)."""
    lines = ["digraph flow_run {", "  rankdir=LR;", f"  label={json.dumps(title)};", "  node [shape=box];"]
    for node_id, node in graph.nodes:
        shape = ", shape=box3d" if node.kind == "flow-run" else ""
        label = json.dumps(f"{node.label}\n{_state(node)}")
        lines.append(f'  "{node_id}" [label={label}{shape}];')
    lines += [f'  "{upstream}" -> "{downstream}";' for upstream, downstream in _edges(graph)]
    lines.append("}")
    return "\n".join(lines)
