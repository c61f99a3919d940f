"""The contract as data (`flowruns contract`, docs/contract.json): generated from the code, kept in
the repository, and true of what a real worker accepts and answers."""

import json
import uuid
from typing import Any

import jsonschema
import pytest

from models.settings import reset_settings
from tasks.contract import contract_document, contract_json
from tests.celery_support import REPOSITORY, Worker, new_id, worker  # noqa: F401

COPY = REPOSITORY / "docs" / "contract.json"


@pytest.fixture
def default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWRUNS_TASK_QUEUE", raising=False)
    reset_settings()


@pytest.mark.usefixtures("default_settings")
def test_the_repository_copy_is_what_the_code_generates() -> None:
    assert COPY.read_text() == contract_json(), "docs/contract.json drifted: run `flowruns contract > docs/contract.json`"


@pytest.mark.usefixtures("default_settings")
def test_every_contract_task_is_described_with_kwargs_and_result() -> None:
    document = contract_document()
    jsonschema.Draft202012Validator.check_schema(document)
    contract_tasks = {
        "flow_runs.create_flow_run", "flow_runs.read_flow_run", "flow_runs.read_flow_runs", "flow_runs.count_flow_runs",
        "flow_runs.update_flow_run", "flow_runs.set_flow_run_state", "flow_runs.delete_flow_run",
        "flow_runs.cleanup_flow_run_concurrency_slots", "flow_runs.read_task_run_dependencies",
        "flow_runs.read_flow_run_graph", "flow_run_states.read_flow_run_states", "flows.create_flow",
        "deployments.create_deployment", "deployments.read_deployment", "work_pools.create_work_pool",
        "work_queues.create_work_queue", "task_runs.create_task_run", "task_runs.set_task_run_state",
    }
    assert contract_tasks <= set(document["tasks"])
    for name in contract_tasks:
        entry = document["tasks"][name]
        assert entry["description"] and entry["queue"] == "flowruns" and {"kwargs", "result"} <= set(entry)
    assert document["tasks"]["maintenance.mark_late_runs"]["queue"] == "flowruns.maintenance"


def validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({"$defs": document["$defs"], **schema})


@pytest.mark.integration
@pytest.mark.usefixtures("db")
def test_real_requests_and_results_match_the_contract(worker: Worker) -> None:
    document = contract_document()
    seen: list[str] = []

    def call(name: str, **kwargs: Any) -> Any:
        entry = document["tasks"][name]
        validator(document, entry["kwargs"]).validate(kwargs)
        result = worker.call(name, **kwargs)
        validator(document, entry["result"]).validate(result)
        seen.append(name)
        return result

    flow = call("flows.create_flow", flow={"name": "contract", "tags": ["a"]})
    deployment = call("deployments.create_deployment", deployment={
        "name": "d", "flow_id": flow["id"], "concurrency_limit": 1,
        "concurrency_options": {"collision_strategy": "ENQUEUE"}})
    call("deployments.read_deployment", deployment_id=deployment["id"])
    run = call("flow_runs.create_flow_run", flow_run={"flow_id": flow["id"], "deployment_id": deployment["id"],
                                                      "parameters": {"n": 1}, "tags": ["t"]})
    call("flow_runs.set_flow_run_state", flow_run_id=run["id"], state={"type": "RUNNING"})
    task_run = call("task_runs.create_task_run", task_run={"flow_run_id": run["id"], "task_key": "k", "dynamic_key": "0"})
    call("task_runs.set_task_run_state", task_run_id=task_run["id"], state={"type": "RUNNING"})
    call("flow_runs.read_flow_run", flow_run_id=run["id"])
    call("flow_runs.read_flow_runs", flow_run_filter={"tags": {"all_": ["t"]}}, limit=10)
    call("flow_runs.count_flow_runs", deployment_filter={})
    call("flow_runs.update_flow_run", flow_run_id=run["id"], flow_run={"name": "renamed"})
    call("flow_runs.read_task_run_dependencies", flow_run_id=run["id"])
    call("flow_runs.read_flow_run_graph", flow_run_id=run["id"])
    call("flow_run_states.read_flow_run_states", flow_run_id=run["id"])
    call("flow_runs.set_flow_run_state", flow_run_id=run["id"], state={"type": "COMPLETED"})
    call("flow_runs.cleanup_flow_run_concurrency_slots", flow_run_id=run["id"])
    call("flow_runs.delete_flow_run", flow_run_id=run["id"])
    assert len(seen) == 17

    refused = worker.outcome("flow_runs.read_flow_run", flow_run_id=str(uuid.uuid4()))
    failure = worker.raw_meta(refused.id)["result"]
    jsonschema.validate(failure, document["failure_result"])
    assert failure["exc_type"] in document["errors"]
    with pytest.raises(jsonschema.ValidationError):
        validator(document, document["tasks"]["flow_runs.set_flow_run_state"]["kwargs"]).validate(
            {"flow_run_id": new_id(), "state": {"type": "DONE"}})
    assert json.loads(COPY.read_text())["tasks"].keys() == document["tasks"].keys()
