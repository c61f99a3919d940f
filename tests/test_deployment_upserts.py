"""Re-creating a deployment (same flow and name) as Prefect 3.9.1 upserts it: only what the request
set changes, the result is what a read returns, and labels carry the flow's and the system's."""

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from tasks import deployments, flow_runs, flows, work_pools
from tests.celery_support import follow_ups, offline_app, ok  # noqa: F401

pytestmark = pytest.mark.usefixtures("db", "follow_ups")


@pytest.fixture
def flow_id() -> str:
    flow = ok(flows.create_flow, flow={"name": "etl", "labels": {"team": "data", "env": "flow"}})
    return str(flow["id"])


@pytest.fixture
def pool() -> dict[str, Any]:
    return ok(work_pools.create_work_pool, work_pool={"name": "pool-a", "type": "process"})


def create(flow_id: str, **fields: Any) -> dict[str, Any]:
    return ok(deployments.create_deployment, deployment={"name": "nightly", "flow_id": flow_id, **fields})


def read(deployment_id: str) -> dict[str, Any]:
    return ok(deployments.read_deployment, deployment_id=deployment_id)


def own_limit_rows(session: Session, deployment_id: str) -> list[int]:
    """The limits of the deployment's own limit rows, as stored."""
    limits = list(session.scalars(
        sa.select(orm.ConcurrencyLimit.limit).where(orm.ConcurrencyLimit.name == f"deployment:{deployment_id}")
    ))
    session.rollback()  # let go of the database (SQLite: of its write lock)
    return limits


@pytest.fixture
def full(flow_id: str, pool: dict[str, Any]) -> dict[str, Any]:
    """A deployment with a limit of 3 (ENQUEUE), tags, parameters and a new queue in pool-a."""
    return create(
        flow_id, concurrency_limit=3, concurrency_options={"collision_strategy": "ENQUEUE"}, tags=["t"],
        parameters={"n": 1}, work_pool_name="pool-a", work_queue_name="q2", description="nightly load",
    )


KEPT = (
    "concurrency_limit", "concurrency_limit_id", "global_concurrency_limit", "concurrency_options", "tags",
    "parameters", "work_queue_id", "work_queue_name", "work_pool_name", "description",
)


# ---------------------------------------------------------------- an upsert writes what was sent


def test_upsert_with_only_name_and_flow_keeps_every_other_field(
    session: Session, flow_id: str, full: dict[str, Any]
) -> None:
    again = create(flow_id)
    assert again["id"] == full["id"]
    assert {key: again[key] for key in KEPT} == {key: full[key] for key in KEPT}
    assert again["concurrency_limit"] == 3 and again["tags"] == ["t"] and again["work_queue_name"] == "q2"
    assert again["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert own_limit_rows(session, full["id"]) == [3]


def test_upsert_writes_the_fields_it_sends_and_only_those(flow_id: str, full: dict[str, Any]) -> None:
    again = create(flow_id, tags=[], parameters={"n": 2})
    assert (again["tags"], again["parameters"]) == ([], {"n": 2})
    assert again["concurrency_limit"] == 3 and again["work_queue_name"] == "q2"
    assert again["description"] == "nightly load"


def test_upsert_with_a_null_limit_drops_the_limit_row(session: Session, flow_id: str, full: dict[str, Any]) -> None:
    again = create(flow_id, concurrency_limit=None)
    assert again["concurrency_limit"] is None and again["concurrency_limit_id"] is None
    assert again["global_concurrency_limit"] is None
    assert own_limit_rows(session, full["id"]) == []
    assert read(full["id"])["concurrency_limit"] is None


def test_upsert_with_a_new_limit_resizes_the_same_row(session: Session, flow_id: str, full: dict[str, Any]) -> None:
    again = create(flow_id, concurrency_limit=5)
    assert again["concurrency_limit_id"] == full["concurrency_limit_id"]
    assert again["global_concurrency_limit"]["limit"] == 5
    assert own_limit_rows(session, full["id"]) == [5]


def test_upsert_with_null_concurrency_options_clears_them(flow_id: str, full: dict[str, Any]) -> None:
    again = create(flow_id, concurrency_options=None)
    assert again["concurrency_options"] is None
    assert again["concurrency_limit"] == 3


def test_upsert_with_a_null_queue_name_keeps_the_queue_consistent(flow_id: str, full: dict[str, Any]) -> None:
    again = create(flow_id, work_queue_name=None)
    queue = (again["work_queue_id"], again["work_queue_name"], again["work_pool_name"])
    assert queue == (full["work_queue_id"], "q2", "pool-a")


# ------------------------------------------------------------- the result is what a read returns


def test_create_result_equals_the_read_back(full: dict[str, Any]) -> None:
    assert full == read(full["id"])
    assert (full["work_queue_name"], full["work_pool_name"]) == ("q2", "pool-a")


@pytest.mark.parametrize(
    "target, queue_name, pool_name",
    [
        ({"work_pool_name": "pool-a"}, "default", "pool-a"),
        ({"work_pool_name": "pool-a", "work_queue_name": "fast"}, "fast", "pool-a"),
        ({"work_queue_name": "solo"}, "solo", "default-agent-pool"),
    ],
)
def test_upsert_onto_a_queue_reports_it_as_the_read_does(
    flow_id: str, pool: dict[str, Any], target: dict[str, str], queue_name: str, pool_name: str
) -> None:
    created = create(flow_id)
    assert (created["work_queue_id"], created["work_pool_name"]) == (None, None)
    moved = create(flow_id, **target)
    assert (moved["work_queue_name"], moved["work_pool_name"]) == (queue_name, pool_name)
    assert moved["work_queue_id"] is not None
    assert moved == read(created["id"])


def test_upsert_onto_a_pool_takes_its_default_queue(flow_id: str, pool: dict[str, Any]) -> None:
    create(flow_id)
    assert create(flow_id, work_pool_name="pool-a")["work_queue_id"] == pool["default_queue_id"]


# ------------------------------------------------------------------------------------- labels


def test_deployment_labels_are_the_flows_then_the_system_label_then_its_own(flow_id: str) -> None:
    deployment = create(flow_id, labels={"env": "x"})
    assert deployment["labels"] == {"team": "data", "env": "x", "prefect.flow.id": flow_id}
    assert read(deployment["id"])["labels"] == deployment["labels"]


def test_deployment_labels_without_own_labels_are_the_flows_and_the_system_label(flow_id: str) -> None:
    assert create(flow_id)["labels"] == {"team": "data", "env": "flow", "prefect.flow.id": flow_id}


def test_own_labels_override_the_flows_and_the_system_label(flow_id: str) -> None:
    labels = create(flow_id, labels={"prefect.flow.id": "mine", "env": "x"})["labels"]
    assert labels == {"team": "data", "env": "x", "prefect.flow.id": "mine"}


def test_upsert_recomputes_the_labels_from_the_flow_and_the_request(flow_id: str) -> None:
    create(flow_id, labels={"env": "x"})
    assert create(flow_id, labels={"tier": "gold"})["labels"] == {
        "team": "data", "env": "flow", "prefect.flow.id": flow_id, "tier": "gold",
    }
    assert create(flow_id)["labels"] == {"team": "data", "env": "flow", "prefect.flow.id": flow_id}


def test_run_of_a_deployment_carries_flow_deployment_system_and_own_labels(flow_id: str) -> None:
    deployment = create(flow_id, labels={"env": "x"})
    run = ok(flow_runs.create_flow_run, flow_run={
        "flow_id": flow_id, "deployment_id": deployment["id"], "labels": {"run": "1"},
    })
    assert run["labels"] == {
        "team": "data", "env": "x", "prefect.flow.id": flow_id,
        "prefect.deployment.id": deployment["id"], "run": "1",
    }


def test_run_after_an_upsert_carries_the_new_deployment_labels(flow_id: str) -> None:
    deployment = create(flow_id, labels={"env": "x"})
    create(flow_id, labels={"env": "y"})
    run = ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, "deployment_id": deployment["id"]})
    assert run["labels"] == {
        "team": "data", "env": "y", "prefect.flow.id": flow_id, "prefect.deployment.id": deployment["id"],
    }


def test_a_deployment_result_has_prefects_response_fields(flow_id: str) -> None:
    """Every field of Prefect 3.9.1's DeploymentResponse, those flowruns does not keep (schedules,
    polling) with the values of a deployment nobody polls; the limit as Prefect's limit response."""
    result = create(flow_id, concurrency_limit=2)

    assert {
        "name", "version", "description", "flow_id", "paused", "schedules", "concurrency_limit",
        "global_concurrency_limit", "concurrency_options", "job_variables", "parameters", "tags", "labels",
        "work_queue_name", "work_queue_id", "last_polled", "parameter_openapi_schema", "path", "pull_steps",
        "entrypoint", "storage_document_id", "infrastructure_document_id", "created_by", "updated_by",
        "work_pool_name", "status", "enforce_parameter_schema", "id", "created", "updated",
    } <= result.keys()
    assert (result["schedules"], result["last_polled"], result["status"]) == ([], None, "NOT_READY")
    limit = result["global_concurrency_limit"]
    assert {"id", "created", "updated", "active", "name", "limit", "active_slots", "slot_decay_per_second"} <= limit.keys()
    assert limit["created"] is not None and (limit["limit"], limit["active_slots"]) == (2, 0)
