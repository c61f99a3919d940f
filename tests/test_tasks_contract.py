"""Every contract task through a real worker on the real Redis, sent by name with JSON kwargs
by a producer that has none of flowruns' code (section 3 of the contract)."""

import datetime
import re
import uuid
from typing import Any

import pytest

from models.errors import ObjectNotFoundError, ValidationError
from models.schemas.actions import FlowCreate, FlowRunCreate, FlowRunUpdate, StateCreate
from models.schemas.filters import FlowRunFilter, FlowRunFilterTags
from models.schemas.states import StateType
from models.types import now_utc
from tasks import producer
from tests.celery_support import Worker, new_id, worker  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]

ISO_WITH_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


def assert_timestamps_have_offsets(value: Any) -> None:
    """Every string that looks like a timestamp carries a UTC offset."""
    if isinstance(value, dict):
        for item in value.values():
            assert_timestamps_have_offsets(item)
    elif isinstance(value, list):
        for item in value:
            assert_timestamps_have_offsets(item)
    elif isinstance(value, str) and re.match(r"^\d{4}-\d\d-\d\dT", value):
        assert ISO_WITH_OFFSET.match(value), value


def test_every_contract_task_over_the_wire(worker: Worker) -> None:
    call = worker.call
    pool = call("work_pools.create_work_pool", work_pool={"name": "pool-a", "type": "process", "concurrency_limit": 5})
    assert pool["name"] == "pool-a" and pool["default_queue_id"]
    queue = call("work_queues.create_work_queue", work_queue={"name": "fast", "work_pool_name": "pool-a", "priority": 2})
    assert queue["work_pool_id"] == pool["id"] and queue["work_pool_name"] == "pool-a"

    flow = call("flows.create_flow", flow={"name": "etl", "tags": ["nightly"], "labels": {"team": "data"}})
    assert call("flows.create_flow", flow={"name": "etl"})["id"] == flow["id"]

    deployment = call(
        "deployments.create_deployment",
        deployment={
            "name": "nightly", "flow_id": flow["id"], "concurrency_limit": 1,
            "concurrency_options": {"collision_strategy": "ENQUEUE"},
            "work_pool_name": "pool-a", "work_queue_name": "fast", "tags": ["d"], "parameters": {"n": 1},
        },
    )
    read = call("deployments.read_deployment", deployment_id=deployment["id"])
    assert read["concurrency_limit"] == 1 and read["work_pool_name"] == "pool-a" and read["work_queue_name"] == "fast"
    assert read["global_concurrency_limit"]["limit"] == 1 and read["global_concurrency_limit"]["active_slots"] == 0

    run = call(
        "flow_runs.create_flow_run",
        flow_run={"flow_id": flow["id"], "deployment_id": deployment["id"], "work_pool_name": "pool-a",
                  "work_queue_name": "fast", "parameters": {"n": 2}, "tags": ["a"],
                  "state": {"type": "SCHEDULED"}},
    )
    assert run["state"]["type"] == "SCHEDULED" and run["work_pool_name"] == "pool-a" and run["work_pool_id"] == pool["id"]
    assert run["work_queue_id"] == queue["id"]
    assert_timestamps_have_offsets(run)
    assert call("flow_runs.read_flow_run", flow_run_id=run["id"])["id"] == run["id"]
    plain = call("flow_runs.create_flow_run", flow_run={"flow_id": flow["id"], "tags": ["b"]})
    assert plain["state"]["type"] == "PENDING"

    assert {r["id"] for r in call("flow_runs.read_flow_runs")} == {run["id"], plain["id"]}
    assert [r["id"] for r in call("flow_runs.read_flow_runs", flow_run_filter={"tags": {"all_": ["a"]}}, limit=5)] == [run["id"]]
    assert call("flow_runs.count_flow_runs", deployment_filter={}) == 1
    assert call("flow_runs.count_flow_runs", work_pool_filter={"name": {"any_": ["pool-a"]}}) == 1
    assert call("flow_runs.update_flow_run", flow_run_id=run["id"], flow_run={"flow_version": "7"}) is True
    assert call("flow_runs.update_flow_run", flow_run_id=new_id(), flow_run={"flow_version": "7"}) is False

    def propose(state_type: str, **extra: Any) -> dict[str, Any]:
        return call("flow_runs.set_flow_run_state", flow_run_id=run["id"], state={"type": state_type}, **extra)

    pending = propose("PENDING")
    assert pending["status"] == "ACCEPT" and pending["state"]["type"] == "PENDING"
    assert call("deployments.read_deployment", deployment_id=deployment["id"])["global_concurrency_limit"]["active_slots"] == 1
    assert propose("PENDING")["status"] == "ABORT"
    running = propose("RUNNING")
    assert running["status"] == "ACCEPT"
    assert_timestamps_have_offsets(running)

    extract = call("task_runs.create_task_run", task_run={"flow_run_id": run["id"], "task_key": "extract", "dynamic_key": "0", "name": "extract"})
    load = call(
        "task_runs.create_task_run",
        task_run={"flow_run_id": run["id"], "task_key": "load", "dynamic_key": "0", "name": "load", "tags": ["t"],
                  "task_inputs": {"rows": [{"input_type": "task_run", "id": extract["id"]}]}, "state": {"type": "PENDING"}},
    )
    for state_type in ("RUNNING", "COMPLETED"):
        result = call("task_runs.set_task_run_state", task_run_id=extract["id"], state={"type": state_type})
        assert result["status"] == "ACCEPT" and result["state"]["type"] == state_type
    assert call("task_runs.set_task_run_state", task_run_id=load["id"], state={"type": "RUNNING"}, force=True)["status"] == "ACCEPT"
    dependencies = {d["id"]: d for d in call("flow_runs.read_task_run_dependencies", flow_run_id=run["id"])}
    assert dependencies[load["id"]]["upstream_dependencies"] == [{"input_type": "task_run", "id": extract["id"]}]
    assert isinstance(dependencies[extract["id"]]["total_run_time"], float)
    graph = call("flow_runs.read_flow_run_graph", flow_run_id=run["id"])
    assert {node_id for node_id, _ in graph["nodes"]} == {extract["id"], load["id"]}
    assert_timestamps_have_offsets(graph)
    later = call("flow_runs.read_flow_run_graph", flow_run_id=run["id"], since=(now_utc() + datetime.timedelta(minutes=1)).isoformat())
    assert {node_id for node_id, _ in later["nodes"]} == {load["id"]}  # extract ended before `since`

    completed = propose("COMPLETED")
    assert completed["status"] == "ACCEPT" and completed["state"]["type"] == "COMPLETED"
    assert call("deployments.read_deployment", deployment_id=deployment["id"])["global_concurrency_limit"]["active_slots"] == 0
    states = call("flow_run_states.read_flow_run_states", flow_run_id=run["id"])
    assert [s["type"] for s in states] == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    stored = call("flow_runs.read_flow_run", flow_run_id=run["id"])
    assert stored["flow_version"] == "7" and stored["total_run_time"] > 0.0 and isinstance(stored["estimated_run_time"], float)

    assert call("flow_runs.cleanup_flow_run_concurrency_slots", flow_run_id=run["id"]) is None
    assert call("flow_runs.cleanup_flow_run_concurrency_slots", flow_run_id=new_id()) is None
    assert call("flow_runs.delete_flow_run", flow_run_id=run["id"]) is True
    assert call("flow_runs.delete_flow_run", flow_run_id=run["id"]) is False
    with pytest.raises(Exception) as raised:
        call("flow_runs.read_flow_run", flow_run_id=run["id"])
    assert type(raised.value).__name__ == "ObjectNotFoundError" and run["id"] in str(raised.value)


def test_the_cleanup_follow_up_runs_on_the_worker(worker: Worker) -> None:
    """A terminal transition that released a slot enqueues the cleanup after commit; the worker runs it."""
    flow = worker.call("flows.create_flow", flow={"name": "follow-up"})
    deployment = worker.call(
        "deployments.create_deployment", deployment={"name": "d", "flow_id": flow["id"], "concurrency_limit": 1}
    )
    run = worker.call(
        "flow_runs.create_flow_run",
        flow_run={"flow_id": flow["id"], "deployment_id": deployment["id"], "state": {"type": "SCHEDULED"}},
    )
    worker.call("flow_runs.set_flow_run_state", flow_run_id=run["id"], state={"type": "PENDING"})
    task_id = new_id()
    worker.call("flow_runs.set_flow_run_state", task_id, flow_run_id=run["id"], state={"type": "CANCELLED"})
    from tasks.base import follow_up_id
    from tasks.flow_runs import CLEANUP

    cleanup = worker.producer.AsyncResult(follow_up_id(task_id, CLEANUP))
    assert cleanup.get(timeout=30) is None and cleanup.state == "SUCCESS"
    assert worker.raw_meta(cleanup.id)["name"] == CLEANUP


def test_typed_producer_helpers(worker: Worker) -> None:
    app, options = worker.producer, {"queue": worker.queue}
    flow = producer.create_flow(app, FlowCreate(name="typed"), **options)
    run = producer.create_flow_run(app, FlowRunCreate(flow_id=flow.id, tags=["x"]), **options)
    assert run.state is not None and run.state.type == StateType.PENDING
    result = producer.set_flow_run_state(app, run.id, StateCreate(type=StateType.RUNNING), **options)
    assert result.status.value == "ACCEPT" and result.state is not None and result.state.type == StateType.RUNNING
    assert producer.update_flow_run(app, run.id, FlowRunUpdate(flow_version="9"), **options) is True
    assert producer.read_flow_run(app, run.id, **options).flow_version == "9"
    runs = producer.read_flow_runs(app, flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["x"])), **options)
    assert [r.id for r in runs] == [run.id]
    assert producer.count_flow_runs(app, **options) == 1
    assert [s.type for s in producer.read_flow_run_states(app, run.id, **options)] == [StateType.PENDING, StateType.RUNNING]
    assert producer.read_task_run_dependencies(app, run.id, **options) == []
    assert producer.read_flow_run_graph(app, run.id, **options).nodes == []
    with pytest.raises(ObjectNotFoundError, match=str(uuid.UUID(int=7))):
        producer.read_flow_run(app, uuid.UUID(int=7), **options)
    with pytest.raises(ValidationError, match="limit"):
        producer.read_flow_runs(app, limit=1000, **options)
    assert producer.delete_flow_run(app, run.id, **options) is True
