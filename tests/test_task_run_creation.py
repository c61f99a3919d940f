"""Creating task runs as Prefect 3.9.1 does: labels from the flow run, one task run per key even
without a flow run, task inputs without their kind named, and the cache key's bound."""

import uuid
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.orm import Session

from models import task_runs as task_run_models
from models.schemas import actions, core
from tasks import flow_runs, flows, task_runs
from tests.celery_support import follow_ups, offline_app, ok  # noqa: F401

pytestmark = pytest.mark.usefixtures("db", "follow_ups")


@pytest.fixture
def flow_run_id() -> str:
    flow = ok(flows.create_flow, flow={"name": "etl", "labels": {"team": "data"}})
    return str(ok(flow_runs.create_flow_run, flow_run={"flow_id": flow["id"], "labels": {"env": "prod"}})["id"])


def create(**task_run: Any) -> dict[str, Any]:
    return ok(task_runs.create_task_run, task_run={"task_key": "k", "dynamic_key": "0", **task_run})


def test_a_task_run_gets_its_flow_runs_labels_then_the_system_label_then_its_own(flow_run_id: str) -> None:
    flow_run = ok(flow_runs.read_flow_run, flow_run_id=flow_run_id)

    task_run = create(flow_run_id=flow_run_id, labels={"mine": 1, "env": "dev"})

    assert task_run["labels"] == {**flow_run["labels"], "prefect.flow-run.id": flow_run_id, "mine": 1, "env": "dev"}
    assert create(flow_run_id=flow_run_id, dynamic_key="1", labels=None)["labels"] == {
        **flow_run["labels"], "prefect.flow-run.id": flow_run_id}


def test_a_task_run_without_a_flow_run_keeps_its_own_labels() -> None:
    assert create(labels={"mine": 1})["labels"] == {"mine": 1}
    assert create(task_key="other", labels=None)["labels"] == {}


def test_a_task_run_without_a_flow_run_is_created_once_per_key(session: Session) -> None:
    first = create(task_key="background", state={"type": "SCHEDULED"})
    again = create(task_key="background", state={"type": "RUNNING"})
    other = create(task_key="background", dynamic_key="1")

    assert again["id"] == first["id"] and again["state"]["type"] == "SCHEDULED"
    assert other["id"] != first["id"]
    body = actions.TaskRunCreate(task_key="background", dynamic_key="0")
    assert str(task_run_models.create_task_run(session, body).id) == first["id"]


def test_task_inputs_need_not_name_their_kind() -> None:
    upstream = str(uuid.uuid4())

    task_run = create(task_inputs={"x": [{"id": upstream}], "n": [{"name": "n"}], "c": [{"type": "int"}]})

    assert task_run["task_inputs"] == {
        "x": [{"input_type": "task_run", "id": upstream}],
        "n": [{"input_type": "parameter", "name": "n"}],
        "c": [{"input_type": "constant", "type": "int"}],
    }


def test_a_cache_key_over_the_bound_is_refused_in_every_schema() -> None:
    longest = "k" * 2000
    assert core.TaskRun(task_key="a", dynamic_key="0", cache_key=longest).cache_key == longest
    with pytest.raises(ValidationError, match="Cache key exceeded maximum allowed length of 2000"):
        core.TaskRun(task_key="a", dynamic_key="0", cache_key=longest + "k")
    with pytest.raises(ValidationError, match="Cache key exceeded maximum allowed length of 2000"):
        actions.TaskRunCreate(task_key="a", dynamic_key="0", cache_key=longest + "k")


# ------------------------------------------------------------------ background (deferred) task runs


def deferred(state_type: str, **details: Any) -> dict[str, Any]:
    return {"type": state_type, "state_details": {"deferred": True, **details}}


def test_a_deferred_completed_state_is_cached_even_when_forced(flow_run_id: str) -> None:
    """A background task's states go through Prefect's background task policy, forced or not:
    its result is cached, so a later start with the same key is handed the cached state."""
    create(flow_run_id=flow_run_id, state=deferred("COMPLETED", cache_key="ck-1"))

    later = create(flow_run_id=flow_run_id, dynamic_key="1")
    result = ok(task_runs.set_task_run_state, task_run_id=later["id"], force=True,
                state=deferred("RUNNING", cache_key="ck-1"))

    assert (result["status"], result["state"]["type"], result["state"]["name"]) == ("REJECT", "COMPLETED", "Cached")


def test_a_background_task_keeps_its_parameters_id_and_is_not_submitted_twice(flow_run_id: str) -> None:
    parameters_id = str(uuid.uuid4())
    task_run = create(state=deferred("SCHEDULED", task_parameters_id=parameters_id))

    pending = ok(task_runs.set_task_run_state, task_run_id=task_run["id"], state=deferred("PENDING"))
    again = ok(task_runs.set_task_run_state, task_run_id=task_run["id"], state=deferred("PENDING"))

    assert pending["status"] == "ACCEPT"
    assert pending["state"]["state_details"]["task_parameters_id"] == parameters_id
    assert again["status"] == "ABORT"
