"""`flowruns graph RUN_ID --format text|mermaid|dot`: a run graph one can look at, from the
database or over the wire."""

import os
import subprocess
import sys
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy.orm import Session

from models import orm
from models.schemas.states import StateType
from tasks import cli
from tests.celery_support import BROKER_URL, REPOSITORY, RESULT_BACKEND, Worker, worker  # noqa: F401
from tests.fixtures import make_flow_run
from tests.test_flow_run_graph import at, make_task, ref


@pytest.fixture
def diamond(session: Session, flow: orm.Flow) -> orm.FlowRun:
    """extract feeds transform and check; load waits on both."""
    run = make_flow_run(session, flow)
    extract = make_task(session, run, "extract", start=at(0), end=at(1))
    transform = make_task(session, run, "transform", inputs={"x": [ref(extract)]}, start=at(1), end=at(2))
    check = make_task(session, run, "check", inputs={"x": [ref(extract)]}, start=at(1.5),
                      state_type=StateType.FAILED, end=at(2))
    make_task(session, run, "load", inputs={"a": [ref(transform)], "b": [ref(check)]}, start=at(3),
              state_type=StateType.RUNNING)
    return run


def graph_output(*arguments: str) -> str:
    result = CliRunner().invoke(cli.main, ["graph", *arguments])
    assert result.exit_code == 0, result.output
    return result.output


def test_text_lists_each_node_with_its_state_and_what_it_waited_on(diamond: orm.FlowRun) -> None:
    lines = graph_output(str(diamond.id)).splitlines()

    assert lines[0].startswith(f"flow run {diamond.id}: 4 nodes")
    assert [line.split()[:2] for line in lines[1:]] == [
        ["extract", "COMPLETED"], ["transform", "COMPLETED"], ["check", "FAILED"], ["load", "RUNNING"]]
    assert lines[4].endswith("← transform, check")


def test_mermaid_and_dot_draw_every_edge_once(diamond: orm.FlowRun) -> None:
    mermaid = graph_output(str(diamond.id), "--format", "mermaid").splitlines()
    dot = graph_output(str(diamond.id), "--format", "dot")

    assert mermaid[0] == "flowchart LR"
    assert sorted(line.strip() for line in mermaid if "-->" in line) == [
        "n0 --> n1", "n0 --> n2", "n1 --> n3", "n2 --> n3"]
    assert 'n2["check<br/>FAILED"]' in "\n".join(mermaid)
    assert dot.startswith("digraph flow_run {") and dot.count(" -> ") == 4


def test_an_unknown_run_is_an_error_not_a_traceback(db: str) -> None:
    missing = uuid.uuid4()
    result = CliRunner().invoke(cli.main, ["graph", str(missing)])
    assert result.exit_code == 1 and f"no flow run with id {missing}" in result.output


@pytest.mark.integration
def test_over_the_wire_a_worker_draws_the_same_graph(diamond: orm.FlowRun, worker: Worker) -> None:
    env = {**os.environ, "FLOWRUNS_BROKER_URL": BROKER_URL, "FLOWRUNS_RESULT_BACKEND": RESULT_BACKEND,
           "FLOWRUNS_TASK_QUEUE": worker.queue}
    wire = subprocess.run([sys.executable, "-m", "tasks.cli", "graph", str(diamond.id), "--over-the-wire"],
                          cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=60, check=True).stdout

    assert wire == graph_output(str(diamond.id))
