"""Names are checked as Prefect 3.9.1 checks them, and only where it does.

Flow, deployment and work queue names hold none of `/ % & > <` (Prefect's `Name`); a work pool
name also holds more than spaces and quotes (`NonEmptyishName`), and over the wire may not start
with `prefect` in any case (Prefect's API answers 403; here a ValidationError naming the field).
Run, task-run and state names take any text, as Prefect's do. A refused name writes nothing.
"""

from typing import Any

import pytest
from sqlalchemy.orm import Session

from models import orm, work_pools
from models.schemas.actions import WorkPoolCreate
from tasks import deployments, flow_runs, flows, task_runs
from tasks import work_pools as work_pool_tasks
from tasks import work_queues
from tests.celery_support import apply, follow_ups, offline_app, ok, refused, row_counts  # noqa: F401

pytestmark = pytest.mark.usefixtures("db", "follow_ups")

FORBIDDEN = "String should match pattern '^[^/%&><]+$'"
"""How a name with a forbidden character is refused (pydantic's words, as Prefect's API gives them)."""


@pytest.fixture
def flow_id() -> str:
    return str(ok(flows.create_flow, flow={"name": "named"})["id"])


@pytest.mark.parametrize("character", list("/%&><"))
def test_a_forbidden_character_is_refused_in_flow_deployment_queue_and_pool_names(
    character: str, flow_id: str, retries: list[Any]
) -> None:
    name = f"a{character}b"
    before = row_counts()
    assert refused(flows.create_flow, flow={"name": name}) == f"flow.name: {FORBIDDEN}"
    assert refused(deployments.create_deployment, deployment={"name": name, "flow_id": flow_id}) == (
        f"deployment.name: {FORBIDDEN}"
    )
    assert refused(work_queues.create_work_queue, work_queue={"name": name}) == f"work_queue.name: {FORBIDDEN}"
    assert refused(work_pool_tasks.create_work_pool, work_pool={"name": name}) == f"work_pool.name: {FORBIDDEN}"
    assert retries == []
    assert row_counts() == before


@pytest.mark.parametrize("pool", [None, "pool-a"])
def test_a_deployment_refuses_a_queue_name_it_could_not_create(pool: str | None, flow_id: str) -> None:
    """A deployment creates its queue when missing, as Prefect's does, so the queue's rules apply."""
    ok(work_pool_tasks.create_work_pool, work_pool={"name": "pool-a"})
    before = row_counts()
    deployment = {"name": "d", "flow_id": flow_id, "work_queue_name": "q/1", "work_pool_name": pool}
    assert refused(deployments.create_deployment, deployment=deployment) == (
        f"deployment.work_queue_name: {FORBIDDEN}"
    )
    assert row_counts() == before
    created = ok(deployments.create_deployment, deployment={**deployment, "work_queue_name": "q 1"})
    assert created["work_queue_name"] == "q 1"


@pytest.mark.parametrize("name", ["", " ", "   ", "''", '""', "' \"", "\" ' \""])
def test_a_work_pool_name_of_only_spaces_and_quotes_is_refused(name: str) -> None:
    before = row_counts()
    assert refused(work_pool_tasks.create_work_pool, work_pool={"name": name}) == (
        "work_pool.name: Value error, a name must hold more than spaces and quotes"
    )
    assert row_counts() == before


@pytest.mark.parametrize("name", ["prefect", "prefect-pool", "Prefect Managed", "PREFECT_X", "pReFeCtive"])
def test_a_work_pool_name_starting_with_prefect_is_reserved(name: str, retries: list[Any]) -> None:
    before = row_counts()
    assert refused(work_pool_tasks.create_work_pool, work_pool={"name": name, "type": "process"}) == (
        f"work_pool.name: {name!r}: names starting with 'prefect' (in any case) are reserved for Prefect's own "
        "work pools"
    )
    assert retries == []
    assert row_counts() == before


@pytest.mark.parametrize("name", ["my-prefect-pool", "pre fect", "pool 'x'", " p ", "ünïcode-名前", "a.b:c@d#e"])
def test_other_work_pool_names_are_taken(name: str) -> None:
    pool = ok(work_pool_tasks.create_work_pool, work_pool={"name": name})
    assert pool["name"] == name


def test_the_model_function_takes_a_reserved_name_as_prefects_does(session: Session) -> None:
    """Only the wire task keeps `prefect...` names back, as only Prefect's API does."""
    pool = work_pools.create_work_pool(session, WorkPoolCreate(name="prefect-internal"))
    assert session.get(orm.WorkPool, pool.id) is not None


@pytest.mark.parametrize("name", ["  ", "''", "it's \"quoted\"", "ünïcode-名前", "a.b:c@d#e", "x" * 1024])
def test_flow_deployment_and_queue_names_without_forbidden_characters_are_taken(name: str, flow_id: str) -> None:
    """Only a pool name must be more than spaces and quotes: Prefect's `Name` takes `"  "`."""
    assert ok(flows.create_flow, flow={"name": name})["name"] == name
    assert ok(deployments.create_deployment, deployment={"name": name, "flow_id": flow_id})["name"] == name
    assert ok(work_queues.create_work_queue, work_queue={"name": name})["name"] == name


def test_run_task_run_and_state_names_take_any_text(flow_id: str) -> None:
    """Prefect's FlowRunCreate, FlowRunUpdate, TaskRunCreate and StateCreate names are plain strings."""
    name = "a/b%c&d>e<f"
    run = ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, "name": name})
    assert run["name"] == name
    assert ok(flow_runs.update_flow_run, flow_run_id=run["id"], flow_run={"name": f"{name}/2"}) is True
    assert ok(flow_runs.read_flow_run, flow_run_id=run["id"])["name"] == f"{name}/2"
    ok(flow_runs.set_flow_run_state, flow_run_id=run["id"], state={"type": "RUNNING", "name": "Run/ning"})
    task_run = ok(task_runs.create_task_run, task_run={"flow_run_id": run["id"], "task_key": "k/1",
                                                       "dynamic_key": "0", "name": name})
    assert task_run["name"] == name


def test_a_name_over_the_index_bound_is_still_refused_by_its_size() -> None:
    assert refused(flows.create_flow, flow={"name": "x" * 1025}) == (
        "flow.name: Value error, 1025 bytes of UTF-8, over the limit of 1024 bytes"
    )
