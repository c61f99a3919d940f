"""Bad requests fail at once with the contract's error class, name the field, are not retried
and write nothing."""

import datetime
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from models.settings import reset_settings
from models.types import now_utc
from tasks import deployments, flow_run_states, flow_runs, flows, task_runs, work_queues
from tests.celery_support import (  # noqa: F401
    REPOSITORY,
    Worker,
    apply,
    follow_ups,
    new_id,
    offline_app,
    ok,
    row_counts,
    worker,
)

pytestmark = pytest.mark.usefixtures("db", "follow_ups")

MISSING = "00000000-0000-4000-8000-000000000001"
"""An id that names nothing (the message must name it)."""


@pytest.fixture
def world() -> dict[str, str]:
    """A flow, a run and a task run, so that only the bad part of each request is bad."""
    flow = ok(flows.create_flow, flow={"name": "etl"})
    run = ok(flow_runs.create_flow_run, flow_run={"flow_id": flow["id"]})
    task_run = ok(task_runs.create_task_run, task_run={"flow_run_id": run["id"], "task_key": "k", "dynamic_key": "0"})
    return {"flow_id": flow["id"], "run_id": run["id"], "task_run_id": task_run["id"]}


Case = tuple[Any, Callable[[dict[str, str]], dict[str, Any]], str, str]

MALFORMED: list[Case] = [
    (flow_runs.set_flow_run_state, lambda w: {"flow_run_id": w["run_id"]}, "ValidationError", "state: Field required"),
    (flow_runs.set_flow_run_state, lambda w: {"flow_run_id": "not-a-uuid", "state": {"type": "RUNNING"}},
     "ValidationError", "flow_run_id: Input should be a valid UUID"),
    (flow_runs.set_flow_run_state, lambda w: {"flow_run_id": w["run_id"], "state": {"type": "DONE"}},
     "ValidationError", "state.type: Input should be 'SCHEDULED'"),
    (flow_runs.set_flow_run_state, lambda w: {"flow_run_id": w["run_id"], "state": {"type": "RUNNING"}, "bogus": 1},
     "ValidationError", "bogus: Extra inputs are not permitted"),
    (flow_runs.set_flow_run_state, lambda w: {"flow_run_id": w["run_id"], "state": {"type": "RUNNING"}, "force": "maybe"},
     "ValidationError", "force: Input should be a valid boolean"),
    (flow_runs.set_flow_run_state,
     lambda w: {"flow_run_id": w["run_id"], "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": "2030-01-01T00:00:00"}}},
     "ValidationError", "state.state_details.scheduled_time"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": "run it"}, "ValidationError", "flow_run: Input should be a valid dictionary"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": w["flow_id"], "colour": "red"}},
     "ValidationError", "flow_run.colour: Extra inputs are not permitted"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": w["flow_id"], "state": {"type": "LATE"}}},
     "ValidationError", "flow_run.state.type"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": w["flow_id"], "tags": "a,b"}},
     "ValidationError", "flow_run.tags: Input should be a valid list"),
    (flow_runs.create_flow_run, lambda w: {}, "ValidationError", "flow_run: Field required"),
    (flow_runs.update_flow_run, lambda w: {"flow_run_id": w["run_id"], "flow_run": {"state_type": "COMPLETED"}},
     "ValidationError", "flow_run.state_type: Extra inputs are not permitted"),
    (flow_runs.read_flow_runs, lambda w: {"limit": 201}, "ValidationError", "limit:"),
    (flow_runs.read_flow_runs, lambda w: {"limit": -1}, "ValidationError", "limit:"),
    (flow_runs.read_flow_runs, lambda w: {"offset": -1}, "ValidationError", "offset:"),
    (flow_runs.read_flow_runs, lambda w: {"sort": "SIDEWAYS"}, "ValidationError", "sort:"),
    (flow_runs.read_flow_runs, lambda w: {"flow_run_filter": {"colour": {"any_": ["red"]}}},
     "ValidationError", "flow_run_filter.colour"),
    (flow_runs.count_flow_runs, lambda w: {"limit": 5}, "ValidationError", "limit: Extra inputs are not permitted"),
    (flow_runs.read_flow_run_graph, lambda w: {"flow_run_id": w["run_id"], "since": "yesterday"},
     "ValidationError", "since:"),
    (flows.create_flow, lambda w: {"flow": {"name": ""}}, "ValidationError", "flow.name"),
    (deployments.create_deployment, lambda w: {"deployment": {"name": "d", "flow_id": w["flow_id"], "concurrency_limit": -1}},
     "ValidationError", "deployment.concurrency_limit"),
    (deployments.create_deployment,
     lambda w: {"deployment": {"name": "d", "flow_id": w["flow_id"], "concurrency_options": {"collision_strategy": "PANIC"}}},
     "ValidationError", "deployment.concurrency_options.collision_strategy"),
    (task_runs.set_task_run_state, lambda w: {"task_run_id": w["task_run_id"], "state": {"type": 3}},
     "ValidationError", "state.type"),
]

UNKNOWN_IDS: list[Case] = [
    (flow_runs.read_flow_run, lambda w: {"flow_run_id": MISSING}, "ObjectNotFoundError", MISSING),
    (flow_runs.set_flow_run_state, lambda w: {"flow_run_id": MISSING, "state": {"type": "RUNNING"}},
     "ObjectNotFoundError", MISSING),
    (flow_runs.read_task_run_dependencies, lambda w: {"flow_run_id": MISSING}, "ObjectNotFoundError", MISSING),
    (flow_runs.read_flow_run_graph, lambda w: {"flow_run_id": MISSING}, "ObjectNotFoundError", MISSING),
    (flow_run_states.read_flow_run_states, lambda w: {"flow_run_id": MISSING}, "ObjectNotFoundError", MISSING),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": MISSING}}, "ObjectNotFoundError", "flow_id"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": w["flow_id"], "deployment_id": MISSING}},
     "ObjectNotFoundError", "deployment_id"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": w["flow_id"], "work_queue_name": "nowhere"}},
     "ObjectNotFoundError", "work_queue_name"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": w["flow_id"], "work_pool_name": "nowhere"}},
     "ObjectNotFoundError", "work_pool_name"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": w["flow_id"], "parent_task_run_id": MISSING}},
     "ObjectNotFoundError", "parent_task_run_id"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": w["flow_id"], "parent_task_run_id": MISSING,
                                                        "state": {"type": "SCHEDULED"}}},
     "ObjectNotFoundError", "parent_task_run_id"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": w["flow_id"], "parent_task_run_id": MISSING,
                                                        "idempotency_key": "k"}},
     "ObjectNotFoundError", "parent_task_run_id"),
    (deployments.read_deployment, lambda w: {"deployment_id": MISSING}, "ObjectNotFoundError", MISSING),
    (deployments.create_deployment, lambda w: {"deployment": {"name": "d", "flow_id": MISSING}},
     "ObjectNotFoundError", "flow_id"),
    (work_queues.create_work_queue, lambda w: {"work_queue": {"name": "q", "work_pool_name": "nowhere"}},
     "ObjectNotFoundError", "work_pool_name"),
    (task_runs.create_task_run, lambda w: {"task_run": {"flow_run_id": MISSING, "task_key": "k", "dynamic_key": "0"}},
     "ObjectNotFoundError", "flow_run_id"),
    (task_runs.set_task_run_state, lambda w: {"task_run_id": MISSING, "state": {"type": "RUNNING"}},
     "ObjectNotFoundError", MISSING),
]


def case_id(case: Case) -> str:
    return f"{case[0].name}-{case[3][:40]}"


@pytest.mark.parametrize("case", MALFORMED + UNKNOWN_IDS, ids=case_id)
def test_bad_request_fails_at_once_names_the_field_and_writes_nothing(
    case: Case, world: dict[str, str], retries: list[Any]
) -> None:
    task, kwargs, error_name, fragment = case
    before = row_counts()
    result = apply(task, **kwargs(world))
    assert result.state == "FAILURE"
    assert type(result.result).__name__ == error_name
    assert fragment in str(result.result)
    assert retries == []
    assert row_counts() == before


def test_positional_arguments_are_refused(world: dict[str, str]) -> None:
    result = flow_runs.read_flow_run.apply(args=[world["run_id"]], task_id=new_id())
    assert result.state == "FAILURE" and type(result.result).__name__ == "ValidationError"
    assert "args" in str(result.result)


def test_oversized_parameters_are_refused(monkeypatch: pytest.MonkeyPatch, world: dict[str, str]) -> None:
    monkeypatch.setenv("FLOWRUNS_MAX_PARAMETER_SIZE_BYTES", "100")
    reset_settings()
    try:
        before = row_counts()
        result = apply(flow_runs.create_flow_run, flow_run={"flow_id": world["flow_id"], "parameters": {"x": "y" * 200}})
        assert type(result.result).__name__ == "ValidationError" and "flow_run.parameters" in str(result.result)
        assert row_counts() == before
    finally:
        monkeypatch.delenv("FLOWRUNS_MAX_PARAMETER_SIZE_BYTES")
        reset_settings()


def test_every_error_is_reported_at_once(world: dict[str, str]) -> None:
    result = apply(flow_runs.set_flow_run_state, flow_run_id="x", state={"type": "DONE"}, force="maybe")
    message = str(result.result)
    assert "flow_run_id:" in message and "state.type:" in message and "force:" in message


# ------------------------------------------------------------------------- through a worker


@pytest.mark.integration
@pytest.mark.parametrize(
    "case",
    [MALFORMED[2], MALFORMED[3], MALFORMED[8], UNKNOWN_IDS[0], UNKNOWN_IDS[1], UNKNOWN_IDS[5]],
    ids=case_id,
)
def test_worker_reports_bad_requests_as_json_failures(case: Case, worker: Worker, world: dict[str, str]) -> None:
    task, kwargs, error_name, fragment = case
    before = row_counts()
    started = time.monotonic()
    result = worker.outcome(task.name, **kwargs(world))
    assert time.monotonic() - started < 10
    meta = worker.raw_meta(result.id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == error_name
    assert meta["result"]["exc_module"] == "models.errors"
    assert len(meta["result"]["exc_message"]) == 1 and fragment in meta["result"]["exc_message"][0]
    assert meta["retries"] == 0
    assert row_counts() == before


FOREIGN_PRODUCER = """
import json, sys
from celery import Celery
app = Celery(broker=sys.argv[1], backend=sys.argv[2])
result = app.send_task(sys.argv[3], kwargs=json.loads(sys.argv[4]), queue=sys.argv[5])
try:
    result.get(timeout=30)
except Exception as error:
    print(json.dumps({"type": type(error).__name__, "message": str(error),
                      "flowruns_loaded": any(m.split(".")[0] in ("models", "tasks") for m in sys.modules)}))
"""


@pytest.mark.integration
def test_a_producer_without_flowruns_sees_the_error_class_name_and_message(worker: Worker) -> None:
    """Celery rebuilds an exception of the same class name from the JSON result."""
    missing = str(uuid.uuid4())
    output = subprocess.run(
        [sys.executable, "-c", FOREIGN_PRODUCER, worker.producer.conf.broker_url, worker.producer.conf.result_backend,
         "flow_runs.read_flow_run", json.dumps({"flow_run_id": missing}), worker.queue],
        cwd="/", capture_output=True, text=True, timeout=60, check=True,
    )
    seen = json.loads(output.stdout)
    assert seen == {"type": "ObjectNotFoundError", "message": f"flow_run_id: no flow run with id {missing}",
                    "flowruns_loaded": False}


@pytest.mark.integration
def test_worker_refuses_a_naive_timestamp_and_a_future_one_is_fine(worker: Worker, world: dict[str, str]) -> None:
    naive = (now_utc() + datetime.timedelta(hours=1)).replace(tzinfo=None).isoformat()
    result = worker.outcome(
        "flow_runs.set_flow_run_state",
        flow_run_id=world["run_id"], state={"type": "SCHEDULED", "state_details": {"scheduled_time": naive}},
    )
    assert worker.raw_meta(result.id)["result"]["exc_type"] == "ValidationError"
    aware = (now_utc() + datetime.timedelta(hours=1)).isoformat()
    ok_result = worker.call(
        "flow_runs.set_flow_run_state",
        flow_run_id=world["run_id"], state={"type": "SCHEDULED", "state_details": {"scheduled_time": aware}},
        force=True,
    )
    assert ok_result["status"] == "ACCEPT"
