"""Every filter family and operator, applied by read_flow_runs / count_flow_runs on real rows.

Each case names the exact set of runs selected and checks that the count agrees with the read.
Filter bodies are given as JSON-like dicts and validated, as they arrive over the wire.
"""

import datetime
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from sqlalchemy.orm import Session

from models import database, orm
from models.flow_run_queries import count_flow_runs, read_flow_runs
from models.schemas import filters
from models.schemas.states import StateType
from tests.databases import clear_tables

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


def at(hours: float) -> datetime.datetime:
    return T0 + datetime.timedelta(hours=hours)


def iso(hours: float) -> str:
    return at(hours).isoformat()


FILTER_BODIES: dict[str, type[filters.FilterBaseModel]] = {
    "flow_filter": filters.FlowFilter,
    "flow_run_filter": filters.FlowRunFilter,
    "task_run_filter": filters.TaskRunFilter,
    "deployment_filter": filters.DeploymentFilter,
    "work_pool_filter": filters.WorkPoolFilter,
    "work_queue_filter": filters.WorkQueueFilter,
}


def parse_filters(bodies: dict[str, Any]) -> dict[str, Any]:
    """Validate `{"flow_run_filter": {...}, ...}` into the filter models."""
    return {key: FILTER_BODIES[key].model_validate(body) for key, body in bodies.items()}


def selected_names(session: Session, **filter_models: Any) -> set[str]:
    """Names of the runs read with these filters, after checking count == len(read)."""
    runs = read_flow_runs(session, **filter_models)
    assert count_flow_runs(session, **filter_models) == len(runs)
    names = [run.name for run in runs]
    assert len(names) == len(set(names)), "a run was returned twice"
    return set(names)


@dataclass
class World:
    """The rows every case filters; runs are referred to by name."""

    flows: dict[str, orm.Flow]
    pools: dict[str, orm.WorkPool]
    queues: dict[str, orm.WorkQueue]
    deployments: dict[str, orm.Deployment]
    runs: dict[str, orm.FlowRun]
    task_runs: dict[str, orm.TaskRun]

    def run_id(self, name: str) -> str:
        return str(self.runs[name].id)


ALL_RUNS = {"alpha-run", "beta-run", "gamma-Run", "delta", "epsilon", "subflow-1", "zeta"}
DEPLOYED = {"alpha-run", "beta-run", "gamma-Run"}
UNDEPLOYED = ALL_RUNS - DEPLOYED


def build_world(session: Session) -> World:
    """Three flows, two pools with three queues, two deployments, seven runs, five task runs.

    | run        | flow       | deployment | queue         | tags          | state               |
    |------------|------------|------------|---------------|---------------|---------------------|
    | alpha-run  | etl-daily  | nightly    | default       | prod, etl     | COMPLETED Completed |
    | beta-run   | etl-daily  | nightly    | high-priority | prod          | RUNNING Running     |
    | gamma-Run  | reporting  | adhoc      | Critical      | -             | SCHEDULED Late      |
    | delta      | reporting  | -          | -             | dev           | SCHEDULED Scheduled |
    | epsilon    | orphan     | -          | -             | etl, dev      | FAILED Failed       |
    | subflow-1  | orphan     | -          | -             | -             | PENDING Pending     |
    | zeta       | orphan     | -          | -             | -             | (no state)          |

    Task runs: extract + transform of alpha-run (extract is subflow-1's parent), extract of
    beta-run, load of epsilon, and a background task without a flow run.
    """
    flows = {
        "etl-daily": orm.Flow(name="etl-daily", tags=["prod", "etl"]),
        "reporting": orm.Flow(name="reporting", tags=[]),
        "orphan": orm.Flow(name="orphan", tags=["dev"]),
    }
    pools = {
        "pool-process": orm.WorkPool(name="pool-process", type="process"),
        "pool-k8s": orm.WorkPool(name="pool-k8s", type="kubernetes"),
    }
    session.add_all([*flows.values(), *pools.values()])
    session.flush()
    queues = {
        "default": orm.WorkQueue(name="default", work_pool_id=pools["pool-process"].id),
        "high-priority": orm.WorkQueue(name="high-priority", work_pool_id=pools["pool-process"].id),
        "Critical": orm.WorkQueue(name="Critical", work_pool_id=pools["pool-k8s"].id),
    }
    session.add_all(queues.values())
    session.flush()
    deployments = {
        "nightly": orm.Deployment(
            name="nightly", flow_id=flows["etl-daily"].id, tags=["prod"], paused=False,
            work_queue_name="default", work_queue_id=queues["default"].id,
        ),
        "adhoc": orm.Deployment(
            name="adhoc", flow_id=flows["reporting"].id, tags=[], paused=True,
            work_queue_name="high-priority", work_queue_id=queues["high-priority"].id,
        ),
    }
    session.add_all(deployments.values())
    session.flush()

    def run(name: str, flow: str, **fields: Any) -> orm.FlowRun:
        return orm.FlowRun(name=name, flow_id=flows[flow].id, **fields)

    def queued(queue: str) -> dict[str, Any]:
        return {"work_queue_id": queues[queue].id, "work_queue_name": queue}

    runs = {
        "alpha-run": run(
            "alpha-run", "etl-daily", deployment_id=deployments["nightly"].id, **queued("default"),
            tags=["prod", "etl"], state_type=StateType.COMPLETED, state_name="Completed",
            expected_start_time=at(0), start_time=at(1), end_time=at(2), flow_version="1.0",
            idempotency_key="key-1",
            created_by={"id": deployments["nightly"].id, "type": "DEPLOYMENT"},
        ),
        "beta-run": run(
            "beta-run", "etl-daily", deployment_id=deployments["nightly"].id,
            **queued("high-priority"), tags=["prod"], state_type=StateType.RUNNING,
            state_name="Running", expected_start_time=at(2), start_time=at(3), flow_version="1.0",
            created_by={"id": uuid.UUID(int=42), "type": "AUTOMATION"},
        ),
        "gamma-Run": run(
            "gamma-Run", "reporting", deployment_id=deployments["adhoc"].id, **queued("Critical"),
            tags=[], state_type=StateType.SCHEDULED, state_name="Late",
            expected_start_time=at(5), next_scheduled_start_time=at(5), flow_version="2.0",
            idempotency_key="key-3",
        ),
        "delta": run(
            "delta", "reporting", tags=["dev"], state_type=StateType.SCHEDULED,
            state_name="Scheduled", expected_start_time=at(6), next_scheduled_start_time=at(6),
        ),
        "epsilon": run(
            "epsilon", "orphan", tags=["etl", "dev"], state_type=StateType.FAILED,
            state_name="Failed", expected_start_time=at(3), start_time=at(4), end_time=at(4.5),
        ),
        "subflow-1": run(
            "subflow-1", "orphan", tags=[], state_type=StateType.PENDING, state_name="Pending",
            expected_start_time=at(0.5),
        ),
        "zeta": run("zeta", "orphan"),
    }
    session.add_all(runs.values())
    session.flush()

    def task(name: str, flow_run: str | None, key: str, **fields: Any) -> orm.TaskRun:
        flow_run_id = runs[flow_run].id if flow_run else None
        return orm.TaskRun(
            name=name, flow_run_id=flow_run_id, task_key=key, dynamic_key="0", **fields
        )

    task_runs = {
        "alpha.extract": task(
            "extract", "alpha-run", "extract", tags=["io"], state_type=StateType.COMPLETED,
            state_name="Completed", expected_start_time=at(1), start_time=at(1), end_time=at(1.5),
        ),
        "alpha.transform": task(
            "transform", "alpha-run", "transform", tags=["cpu", "io"],
            state_type=StateType.COMPLETED, state_name="Completed", expected_start_time=at(1.5),
            start_time=at(1.5), end_time=at(2),
        ),
        "beta.extract": task(
            "extract", "beta-run", "extract", tags=[], state_type=StateType.RUNNING,
            state_name="Running", expected_start_time=at(3), start_time=at(3),
        ),
        "epsilon.load": task(
            "load", "epsilon", "load", tags=["io"], state_type=StateType.FAILED,
            state_name="Failed", expected_start_time=at(4), end_time=at(4.5),
        ),
        "background": task(
            "bg", None, "bg", tags=[], state_type=StateType.COMPLETED, state_name="Completed",
        ),
    }
    session.add_all(task_runs.values())
    session.flush()
    runs["subflow-1"].parent_task_run_id = task_runs["alpha.extract"].id
    session.commit()
    return World(flows, pools, queues, deployments, runs, task_runs)


@pytest.fixture(scope="module")
def world_session(database_url: str) -> Iterator[tuple[World, Session]]:
    """One world for the whole module: every case here only reads it."""
    session = database.get_session_factory(database_url)()
    try:
        yield build_world(session), session
    finally:
        session.close()
        clear_tables(database.get_engine(database_url))


@pytest.fixture
def world(world_session: tuple[World, Session]) -> World:
    return world_session[0]


@pytest.fixture
def reader(world_session: tuple[World, Session]) -> Iterator[Session]:
    """The session that built the world (tests of this module never write).

    Rolled back after each test, so that no transaction (on SQLite: no write lock) stays open.
    """
    yield world_session[1]
    world_session[1].rollback()


Case = Callable[[World], dict[str, Any]]


def case(bodies: Case, expected: set[str], id: str) -> Any:
    return pytest.param(bodies, expected, id=id)


def run_filter(body: dict[str, Any]) -> Case:
    return lambda w: {"flow_run_filter": body}


FLOW_RUN_CASES = [
    case(lambda w: {"flow_run_filter": {}}, ALL_RUNS, "empty-filter-selects-all"),
    case(lambda w: {}, ALL_RUNS, "no-filter-selects-all"),
    # id
    case(lambda w: {"flow_run_filter": {"id": {"any_": [w.run_id("alpha-run"),
                                                         w.run_id("delta")]}}},
         {"alpha-run", "delta"}, "id-any"),
    case(run_filter({"id": {"any_": []}}), set(), "id-any-empty-matches-nothing"),
    case(lambda w: {"flow_run_filter": {"id": {"not_any_": [w.run_id("alpha-run")]}}},
         ALL_RUNS - {"alpha-run"}, "id-not-any"),
    case(run_filter({"id": {"not_any_": []}}), ALL_RUNS, "id-not-any-empty-is-ignored"),
    case(lambda w: {"flow_run_filter": {"id": {
        "any_": [w.run_id("alpha-run"), w.run_id("delta")], "not_any_": [w.run_id("delta")]}}},
         {"alpha-run"}, "id-any-and-not-any"),
    # name
    case(run_filter({"name": {"any_": ["alpha-run", "delta", "nope"]}}), {"alpha-run", "delta"},
         "name-any"),
    case(run_filter({"name": {"like_": "RUN"}}), {"alpha-run", "beta-run", "gamma-Run"},
         "name-like-is-case-insensitive-substring"),
    case(run_filter({"name": {"like_": ""}}), ALL_RUNS, "name-like-empty-is-ignored"),
    case(run_filter({"name": {"any_": ["alpha-run", "delta"], "like_": "ALPHA"}}), {"alpha-run"},
         "name-any-and-like"),
    # tags
    case(run_filter({"tags": {"all_": ["prod", "etl"]}}), {"alpha-run"}, "tags-all"),
    case(run_filter({"tags": {"all_": ["prod"]}}), {"alpha-run", "beta-run"}, "tags-all-one"),
    case(run_filter({"tags": {"all_": ["prod", "prod"]}}), {"alpha-run", "beta-run"},
         "tags-all-repeated-tag"),
    case(run_filter({"tags": {"all_": []}}), ALL_RUNS, "tags-all-empty-matches-everything"),
    case(run_filter({"tags": {"any_": ["etl", "dev"]}}), {"alpha-run", "delta", "epsilon"},
         "tags-any"),
    case(run_filter({"tags": {"any_": []}}), set(), "tags-any-empty-matches-nothing"),
    case(run_filter({"tags": {"is_null_": True}}), {"gamma-Run", "subflow-1", "zeta"},
         "tags-is-null"),
    case(run_filter({"tags": {"is_null_": False}}),
         {"alpha-run", "beta-run", "delta", "epsilon"}, "tags-is-not-null"),
    case(run_filter({"tags": {"all_": ["etl"], "any_": ["dev"]}}), {"epsilon"}, "tags-all-and-any"),
    case(run_filter({"tags": {"operator": "or_", "all_": ["prod", "etl"], "is_null_": True}}),
         {"alpha-run", "gamma-Run", "subflow-1", "zeta"}, "tags-or"),
    # deployment_id
    case(lambda w: {"flow_run_filter": {"deployment_id": {
        "any_": [str(w.deployments["nightly"].id)]}}},
         {"alpha-run", "beta-run"}, "deployment-id-any"),
    case(run_filter({"deployment_id": {"is_null_": True}}), UNDEPLOYED, "deployment-id-is-null"),
    case(run_filter({"deployment_id": {"is_null_": False}}), DEPLOYED, "deployment-id-not-null"),
    case(lambda w: {"flow_run_filter": {"deployment_id": {
        "operator": "or_", "any_": [str(w.deployments["adhoc"].id)], "is_null_": True}}},
         UNDEPLOYED | {"gamma-Run"}, "deployment-id-or"),
    # work_queue_name
    case(run_filter({"work_queue_name": {"any_": ["default", "Critical"]}}),
         {"alpha-run", "gamma-Run"}, "work-queue-name-any"),
    case(run_filter({"work_queue_name": {"is_null_": True}}), UNDEPLOYED,
         "work-queue-name-is-null"),
    case(run_filter({"work_queue_name": {"operator": "or_", "any_": ["default"],
                                         "is_null_": True}}),
         UNDEPLOYED | {"alpha-run"}, "work-queue-name-or"),
    # state
    case(run_filter({"state": {"type": {"any_": ["SCHEDULED"]}}}), {"gamma-Run", "delta"},
         "state-type-any"),
    case(run_filter({"state": {"type": {"not_any_": ["SCHEDULED", "PENDING"]}}}),
         {"alpha-run", "beta-run", "epsilon"}, "state-type-not-any-excludes-stateless-too"),
    case(run_filter({"state": {"type": {"any_": ["SCHEDULED", "RUNNING"],
                                        "not_any_": ["RUNNING"]}}}),
         {"gamma-Run", "delta"}, "state-type-any-and-not-any-are-anded"),
    case(run_filter({"state": {"name": {"any_": ["Late"]}}}), {"gamma-Run"}, "state-name-any"),
    case(run_filter({"state": {"name": {"not_any_": ["Late", "Pending"]}}}),
         {"alpha-run", "beta-run", "delta", "epsilon"}, "state-name-not-any"),
    case(run_filter({"state": {"name": {"any_": ["Late", "Scheduled"], "not_any_": ["Late"]}}}),
         {"delta"}, "state-name-any-and-not-any-are-anded"),
    case(run_filter({"state": {"type": {"any_": ["SCHEDULED"]}, "name": {"any_": ["Scheduled"]}}}),
         {"delta"}, "state-type-and-name"),
    case(run_filter({"state": {"operator": "or_", "type": {"any_": ["COMPLETED"]},
                               "name": {"any_": ["Late"]}}}),
         {"alpha-run", "gamma-Run"}, "state-or"),
    case(run_filter({"state": {"operator": "or_", "type": {"any_": ["COMPLETED"]}, "name": {}}}),
         {"alpha-run"}, "state-or-ignores-empty-sub-filter"),
    case(run_filter({"state": {}}), ALL_RUNS, "state-empty"),
    # flow_version
    case(run_filter({"flow_version": {"any_": ["1.0"]}}), {"alpha-run", "beta-run"},
         "flow-version-any"),
    # start_time: the range falls back to the expected start, is_null_ looks at start_time
    case(run_filter({"start_time": {"after_": iso(3)}}),
         {"beta-run", "gamma-Run", "delta", "epsilon"}, "start-time-after-inclusive"),
    case(run_filter({"start_time": {"before_": iso(1)}}), {"alpha-run", "subflow-1"},
         "start-time-before-inclusive-falls-back-to-expected"),
    case(run_filter({"start_time": {"after_": iso(3), "before_": iso(5)}}),
         {"beta-run", "gamma-Run", "epsilon"}, "start-time-range"),
    case(run_filter({"start_time": {"is_null_": True}}),
         {"gamma-Run", "delta", "subflow-1", "zeta"}, "start-time-is-null"),
    case(run_filter({"start_time": {"is_null_": False}}), {"alpha-run", "beta-run", "epsilon"},
         "start-time-not-null"),
    # end_time
    case(run_filter({"end_time": {"before_": iso(2)}}), {"alpha-run"}, "end-time-before"),
    case(run_filter({"end_time": {"after_": iso(2)}}), {"alpha-run", "epsilon"}, "end-time-after"),
    case(run_filter({"end_time": {"is_null_": True}}), ALL_RUNS - {"alpha-run", "epsilon"},
         "end-time-is-null"),
    case(run_filter({"end_time": {"is_null_": False}}), {"alpha-run", "epsilon"},
         "end-time-not-null"),
    # expected_start_time
    case(run_filter({"expected_start_time": {"before_": iso(2)}}),
         {"alpha-run", "beta-run", "subflow-1"}, "expected-start-time-before"),
    case(run_filter({"expected_start_time": {"after_": iso(5)}}), {"gamma-Run", "delta"},
         "expected-start-time-after"),
    case(run_filter({"expected_start_time": {"after_": iso(2), "before_": iso(3)}}),
         {"beta-run", "epsilon"}, "expected-start-time-range"),
    # next_scheduled_start_time
    case(run_filter({"next_scheduled_start_time": {"before_": iso(5)}}), {"gamma-Run"},
         "next-scheduled-before"),
    case(run_filter({"next_scheduled_start_time": {"after_": iso(5.5)}}), {"delta"},
         "next-scheduled-after"),
    # parent_flow_run_id / parent_task_run_id
    case(lambda w: {"flow_run_filter": {"parent_flow_run_id": {"any_": [w.run_id("alpha-run")]}}},
         {"subflow-1"}, "parent-flow-run-any"),
    case(lambda w: {"flow_run_filter": {"parent_flow_run_id": {"any_": [w.run_id("beta-run")]}}},
         set(), "parent-flow-run-without-subflows"),
    case(run_filter({"parent_flow_run_id": {"any_": []}}), set(), "parent-flow-run-any-empty"),
    case(lambda w: {"flow_run_filter": {"parent_task_run_id": {
        "any_": [str(w.task_runs["alpha.extract"].id)]}}},
         {"subflow-1"}, "parent-task-run-any"),
    case(run_filter({"parent_task_run_id": {"is_null_": False}}), {"subflow-1"},
         "parent-task-run-not-null"),
    case(run_filter({"parent_task_run_id": {"is_null_": True}}), ALL_RUNS - {"subflow-1"},
         "parent-task-run-is-null"),
    # idempotency_key (NOT IN never matches a NULL key, as in SQL and Prefect)
    case(run_filter({"idempotency_key": {"any_": ["key-1"]}}), {"alpha-run"}, "idempotency-any"),
    case(run_filter({"idempotency_key": {"not_any_": ["key-1"]}}), {"gamma-Run"},
         "idempotency-not-any"),
    # created_by
    case(lambda w: {"flow_run_filter": {"created_by": {"id_": [str(w.deployments["nightly"].id)]}}},
         {"alpha-run"}, "created-by-id"),
    case(run_filter({"created_by": {"type_": ["AUTOMATION"]}}), {"beta-run"}, "created-by-type"),
    case(run_filter({"created_by": {"is_null_": True}}), UNDEPLOYED | {"gamma-Run"},
         "created-by-is-null"),
    case(run_filter({"created_by": {"is_null_": False}}), {"alpha-run", "beta-run"},
         "created-by-not-null"),
    case(lambda w: {"flow_run_filter": {"created_by": {
        "operator": "or_", "id_": [str(w.deployments["nightly"].id)], "type_": ["AUTOMATION"]}}},
         {"alpha-run", "beta-run"}, "created-by-or"),
    # top-level operator
    case(run_filter({"name": {"any_": ["delta"]}, "flow_version": {"any_": ["2.0"]}}), set(),
         "top-level-and"),
    case(run_filter({"operator": "or_", "name": {"any_": ["delta"]},
                     "flow_version": {"any_": ["2.0"]}}),
         {"delta", "gamma-Run"}, "top-level-or"),
]

FLOW_CASES = [
    case(lambda w: {"flow_filter": {}}, ALL_RUNS, "flow-empty"),
    case(lambda w: {"flow_filter": {"id": {"any_": [str(w.flows["etl-daily"].id)]}}},
         {"alpha-run", "beta-run"}, "flow-id-any"),
    case(lambda w: {"flow_filter": {"id": {"any_": []}}}, set(), "flow-id-any-empty"),
    case(lambda w: {"flow_filter": {"id": {"not_any_": [str(w.flows["etl-daily"].id)]}}},
         ALL_RUNS - {"alpha-run", "beta-run"}, "flow-id-not-any"),
    case(lambda w: {"flow_filter": {"name": {"any_": ["reporting"]}}}, {"gamma-Run", "delta"},
         "flow-name-any"),
    case(lambda w: {"flow_filter": {"name": {"like_": "ETL"}}}, {"alpha-run", "beta-run"},
         "flow-name-like"),
    case(lambda w: {"flow_filter": {"tags": {"all_": ["prod", "etl"]}}}, {"alpha-run", "beta-run"},
         "flow-tags-all"),
    case(lambda w: {"flow_filter": {"tags": {"all_": []}}}, ALL_RUNS, "flow-tags-all-empty"),
    case(lambda w: {"flow_filter": {"tags": {"is_null_": True}}}, {"gamma-Run", "delta"},
         "flow-tags-is-null"),
    case(lambda w: {"flow_filter": {"tags": {"is_null_": False}}},
         ALL_RUNS - {"gamma-Run", "delta"}, "flow-tags-not-null"),
    case(lambda w: {"flow_filter": {"tags": {"operator": "or_", "all_": ["dev"],
                                             "is_null_": True}}},
         {"gamma-Run", "delta", "epsilon", "subflow-1", "zeta"}, "flow-tags-or"),
    case(lambda w: {"flow_filter": {"deployment": {"is_null_": True}}},
         {"epsilon", "subflow-1", "zeta"}, "flow-without-deployment"),
    case(lambda w: {"flow_filter": {"deployment": {"is_null_": False}}},
         {"alpha-run", "beta-run", "gamma-Run", "delta"}, "flow-with-deployment"),
    case(lambda w: {"flow_filter": {"operator": "or_", "name": {"any_": ["reporting"]},
                                    "tags": {"all_": ["prod"]}}},
         {"alpha-run", "beta-run", "gamma-Run", "delta"}, "flow-or"),
]

HAVE_TASK_RUNS = {"alpha-run", "beta-run", "epsilon"}

TASK_RUN_CASES = [
    case(lambda w: {"task_run_filter": {}}, HAVE_TASK_RUNS, "task-run-empty-means-has-one"),
    case(lambda w: {"task_run_filter": {"id": {"any_": [str(w.task_runs["beta.extract"].id)]}}},
         {"beta-run"}, "task-run-id-any"),
    case(lambda w: {"task_run_filter": {"id": {"any_": []}}}, set(), "task-run-id-any-empty"),
    case(lambda w: {"task_run_filter": {"name": {"any_": ["extract"]}}}, {"alpha-run", "beta-run"},
         "task-run-name-any"),
    case(lambda w: {"task_run_filter": {"name": {"like_": "FORM"}}}, {"alpha-run"},
         "task-run-name-like"),
    case(lambda w: {"task_run_filter": {"tags": {"all_": ["io"]}}}, {"alpha-run", "epsilon"},
         "task-run-tags-all-several-matches-per-run"),
    case(lambda w: {"task_run_filter": {"tags": {"all_": ["io", "cpu"]}}}, {"alpha-run"},
         "task-run-tags-all-two"),
    case(lambda w: {"task_run_filter": {"tags": {"is_null_": True}}}, {"beta-run"},
         "task-run-tags-is-null"),
    case(lambda w: {"task_run_filter": {"tags": {"is_null_": False}}}, {"alpha-run", "epsilon"},
         "task-run-tags-not-null"),
    case(lambda w: {"task_run_filter": {"state": {"type": {"any_": ["COMPLETED"]}}}},
         {"alpha-run"}, "task-run-state-type"),
    case(lambda w: {"task_run_filter": {"state": {"name": {"any_": ["Running"]}}}}, {"beta-run"},
         "task-run-state-name"),
    case(lambda w: {"task_run_filter": {"state": {
        "operator": "or_", "type": {"any_": ["FAILED"]}, "name": {"any_": ["Running"]}}}},
         {"beta-run", "epsilon"}, "task-run-state-or"),
    case(lambda w: {"task_run_filter": {"start_time": {"before_": iso(1.5)}}}, {"alpha-run"},
         "task-run-start-before"),
    case(lambda w: {"task_run_filter": {"start_time": {"after_": iso(2)}}}, {"beta-run"},
         "task-run-start-after-uses-raw-start"),
    case(lambda w: {"task_run_filter": {"start_time": {"is_null_": True}}}, {"epsilon"},
         "task-run-start-is-null"),
    case(lambda w: {"task_run_filter": {"end_time": {"after_": iso(2)}}}, {"alpha-run", "epsilon"},
         "task-run-end-after"),
    case(lambda w: {"task_run_filter": {"end_time": {"before_": iso(1.5)}}}, {"alpha-run"},
         "task-run-end-before"),
    case(lambda w: {"task_run_filter": {"end_time": {"is_null_": True}}}, {"beta-run"},
         "task-run-end-is-null"),
    case(lambda w: {"task_run_filter": {"expected_start_time": {"after_": iso(3)}}},
         {"beta-run", "epsilon"}, "task-run-expected-after"),
    case(lambda w: {"task_run_filter": {"expected_start_time": {"before_": iso(1)}}},
         {"alpha-run"}, "task-run-expected-before"),
    case(lambda w: {"task_run_filter": {"subflow_runs": {"exists_": True}}}, {"alpha-run"},
         "task-run-has-subflow"),
    case(lambda w: {"task_run_filter": {"subflow_runs": {"exists_": False}}}, HAVE_TASK_RUNS,
         "task-run-without-subflow"),
    case(lambda w: {"task_run_filter": {"flow_run_id": {"any_": [w.run_id("beta-run")]}}},
         {"beta-run"}, "task-run-flow-run-any"),
    case(lambda w: {"task_run_filter": {"flow_run_id": {"is_null_": True}}}, set(),
         "task-run-background-only-matches-no-run"),
    case(lambda w: {"task_run_filter": {"operator": "or_", "name": {"any_": ["load"]},
                                        "state": {"type": {"any_": ["RUNNING"]}}}},
         {"beta-run", "epsilon"}, "task-run-or"),
]

DEPLOYMENT_CASES = [
    case(lambda w: {"deployment_filter": {}}, DEPLOYED, "deployment-empty-means-has-one"),
    case(lambda w: {"deployment_filter": {"id": {"any_": [str(w.deployments["adhoc"].id)]}}},
         {"gamma-Run"}, "deployment-id-any"),
    case(lambda w: {"deployment_filter": {"id": {"not_any_": [str(w.deployments["adhoc"].id)]}}},
         {"alpha-run", "beta-run"}, "deployment-id-not-any"),
    case(lambda w: {"deployment_filter": {"name": {"any_": ["nightly"]}}},
         {"alpha-run", "beta-run"},
         "deployment-name-any"),
    case(lambda w: {"deployment_filter": {"name": {"like_": "HOC"}}}, {"gamma-Run"},
         "deployment-name-like"),
    case(lambda w: {"deployment_filter": {"flow_or_deployment_name": {"like_": "REPORT"}}},
         {"gamma-Run"}, "flow-or-deployment-name-matches-flow"),
    case(lambda w: {"deployment_filter": {"flow_or_deployment_name": {"like_": "night"}}},
         {"alpha-run", "beta-run"}, "flow-or-deployment-name-matches-deployment"),
    case(lambda w: {"deployment_filter": {"paused": {"eq_": True}}}, {"gamma-Run"},
         "deployment-paused"),
    case(lambda w: {"deployment_filter": {"paused": {"eq_": False}}}, {"alpha-run", "beta-run"},
         "deployment-not-paused"),
    case(lambda w: {"deployment_filter": {"tags": {"all_": ["prod"]}}}, {"alpha-run", "beta-run"},
         "deployment-tags-all"),
    case(lambda w: {"deployment_filter": {"tags": {"any_": ["prod", "other"]}}},
         {"alpha-run", "beta-run"}, "deployment-tags-any"),
    case(lambda w: {"deployment_filter": {"tags": {"any_": []}}}, set(),
         "deployment-tags-any-empty"),
    case(lambda w: {"deployment_filter": {"tags": {"is_null_": True}}}, {"gamma-Run"},
         "deployment-tags-is-null"),
    case(lambda w: {"deployment_filter": {"work_queue_name": {"any_": ["high-priority"]}}},
         {"gamma-Run"}, "deployment-work-queue-name"),
    case(lambda w: {"deployment_filter": {"concurrency_limit": {"ge_": 5, "is_null_": False}}},
         DEPLOYED, "deployment-concurrency-limit-is-ignored"),
    case(lambda w: {"deployment_filter": {"operator": "or_", "paused": {"eq_": True},
                                          "concurrency_limit": {"le_": 1}}},
         {"gamma-Run"}, "deployment-ignored-criterion-does-not-swallow-or"),
    case(lambda w: {"deployment_filter": {"operator": "or_", "paused": {"eq_": True},
                                          "name": {"any_": ["nightly"]}}},
         DEPLOYED, "deployment-or"),
]

WORK_POOL_AND_QUEUE_CASES = [
    case(lambda w: {"work_pool_filter": {}}, DEPLOYED, "work-pool-empty-means-has-queue"),
    case(lambda w: {"work_pool_filter": {"id": {"any_": [str(w.pools["pool-k8s"].id)]}}},
         {"gamma-Run"}, "work-pool-id"),
    case(lambda w: {"work_pool_filter": {"name": {"any_": ["pool-process"]}}},
         {"alpha-run", "beta-run"}, "work-pool-name"),
    case(lambda w: {"work_pool_filter": {"type": {"any_": ["kubernetes"]}}}, {"gamma-Run"},
         "work-pool-type"),
    case(lambda w: {"work_pool_filter": {"type": {"any_": []}}}, set(), "work-pool-type-empty"),
    case(lambda w: {"work_pool_filter": {"operator": "or_", "name": {"any_": ["pool-k8s"]},
                                         "type": {"any_": ["process"]}}},
         DEPLOYED, "work-pool-or"),
    case(lambda w: {"work_queue_filter": {}}, DEPLOYED, "work-queue-empty-means-has-queue"),
    case(lambda w: {"work_queue_filter": {"id": {"any_": [str(w.queues["high-priority"].id)]}}},
         {"beta-run"}, "work-queue-id"),
    case(lambda w: {"work_queue_filter": {"name": {"any_": ["default"]}}}, {"alpha-run"},
         "work-queue-name-any"),
    case(lambda w: {"work_queue_filter": {"name": {"startswith_": ["crit"]}}}, {"gamma-Run"},
         "work-queue-startswith-is-case-insensitive"),
    case(lambda w: {"work_queue_filter": {"name": {"startswith_": ["de", "HIGH"]}}},
         {"alpha-run", "beta-run"}, "work-queue-startswith-several-prefixes"),
    case(lambda w: {"work_queue_filter": {"name": {"startswith_": ["efault"]}}}, set(),
         "work-queue-startswith-is-a-prefix"),
    case(lambda w: {"work_queue_filter": {"name": {"startswith_": []}}}, DEPLOYED,
         "work-queue-startswith-empty-selects-nothing-out"),
    case(lambda w: {"work_queue_filter": {"operator": "or_", "name": {"any_": ["default"]},
                                          "id": {"any_": [str(w.queues["Critical"].id)]}}},
         {"alpha-run", "gamma-Run"}, "work-queue-or"),
]


@pytest.mark.parametrize(("bodies", "expected"), FLOW_RUN_CASES)
def test_flow_run_filter_selects_exactly(
    reader: Session, world: World, bodies: Case, expected: set[str]
) -> None:
    assert selected_names(reader, **parse_filters(bodies(world))) == expected


@pytest.mark.parametrize(("bodies", "expected"), FLOW_CASES)
def test_flow_filter_selects_runs_of_matching_flows(
    reader: Session, world: World, bodies: Case, expected: set[str]
) -> None:
    assert selected_names(reader, **parse_filters(bodies(world))) == expected


@pytest.mark.parametrize(("bodies", "expected"), TASK_RUN_CASES)
def test_task_run_filter_selects_runs_with_a_matching_task_run(
    reader: Session, world: World, bodies: Case, expected: set[str]
) -> None:
    assert selected_names(reader, **parse_filters(bodies(world))) == expected


@pytest.mark.parametrize(("bodies", "expected"), DEPLOYMENT_CASES)
def test_deployment_filter_selects_runs_of_matching_deployments(
    reader: Session, world: World, bodies: Case, expected: set[str]
) -> None:
    assert selected_names(reader, **parse_filters(bodies(world))) == expected


@pytest.mark.parametrize(("bodies", "expected"), WORK_POOL_AND_QUEUE_CASES)
def test_work_pool_and_queue_filters_select_runs_of_matching_queues(
    reader: Session, world: World, bodies: Case, expected: set[str]
) -> None:
    assert selected_names(reader, **parse_filters(bodies(world))) == expected


def test_tag_filters_bind_their_values_on_each_call(reader: Session) -> None:
    """Same statement shape, different tags: the compiled-statement cache must not leak values."""
    for tags, expected in (
        (["prod"], {"alpha-run", "beta-run"}),
        (["dev"], {"delta", "epsilon"}),
        (["etl"], {"alpha-run", "epsilon"}),
    ):
        for operator in ("all_", "any_"):
            body = {"tags": {operator: tags}}
            assert selected_names(reader, **parse_filters({"flow_run_filter": body})) == expected


def test_filters_compose_with_and_across_families(reader: Session) -> None:
    bodies = {
        "flow_filter": {"name": {"any_": ["etl-daily"]}},
        "flow_run_filter": {"state": {"type": {"any_": ["COMPLETED", "RUNNING"]}}},
        "task_run_filter": {"tags": {"all_": ["io"]}},
        "deployment_filter": {"name": {"any_": ["nightly"]}},
        "work_pool_filter": {"type": {"any_": ["process"]}},
        "work_queue_filter": {"name": {"startswith_": ["def"]}},
    }
    assert selected_names(reader, **parse_filters(bodies)) == {"alpha-run"}


def test_empty_filter_compiles_to_true() -> None:
    models: list[type[filters.FilterBaseModel]] = [
        *FILTER_BODIES.values(), filters.FlowRunFilterState, filters.FlowRunFilterTags
    ]
    for model in models:
        assert str(model().as_sql_filter()) == "true"


# --------------------------------------------------------------------------- bad bodies


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        pytest.param(filters.FlowRunFilter, {"nme": {"any_": ["x"]}}, "nme", id="unknown-field"),
        pytest.param(filters.FlowRunFilter, {"tags": {"contains": ["x"]}}, "tags.contains",
                     id="unknown-nested-field"),
        pytest.param(filters.FlowRunFilter, {"id": {"any_": ["not-a-uuid"]}}, "id.any_.0",
                     id="bad-uuid"),
        pytest.param(filters.FlowRunFilter, {"state": {"type": {"any_": ["BOGUS"]}}},
                     "state.type.any_.0", id="unknown-state-type"),
        pytest.param(filters.FlowRunFilter, {"tags": {"all_": "prod"}}, "tags.all_",
                     id="string-instead-of-list"),
        pytest.param(filters.FlowRunFilter, {"name": {"like_": 5}}, "name.like_",
                     id="number-instead-of-string"),
        pytest.param(filters.FlowRunFilter, {"start_time": {"after_": "yesterday"}},
                     "start_time.after_", id="bad-timestamp"),
        pytest.param(filters.FlowRunFilter, {"end_time": {"before_": "2024-01-01T00:00:00"}},
                     "end_time.before_", id="timestamp-without-offset"),
        pytest.param(filters.FlowRunFilter, {"operator": "xor_"}, "operator", id="bad-operator"),
        pytest.param(filters.FlowRunFilter, {"deployment_id": {"is_null_": "maybe"}},
                     "deployment_id.is_null_", id="bad-bool"),
        pytest.param(filters.FlowFilter, {"tags": {"any_": ["x"]}}, "tags.any_",
                     id="flow-tags-have-no-any"),
        pytest.param(filters.TaskRunFilter, {"state": {"type": {"not_any_": ["RUNNING"]}}},
                     "state.type.not_any_", id="task-run-state-has-no-not-any"),
        pytest.param(filters.TaskRunFilter, {"subflow_runs": {"exists_": "yes please"}},
                     "subflow_runs.exists_", id="task-run-bad-exists"),
        pytest.param(filters.DeploymentFilter, {"paused": {"eq_": [1]}}, "paused.eq_",
                     id="deployment-bad-eq"),
        pytest.param(filters.DeploymentFilter, {"flow_name": {}}, "flow_name",
                     id="deployment-unknown-field"),
        pytest.param(filters.WorkPoolFilter, {"type": {"like_": "k8s"}}, "type.like_",
                     id="work-pool-unknown-operator"),
        pytest.param(filters.WorkQueueFilter, {"name": {"startswith_": "crit"}},
                     "name.startswith_", id="work-queue-startswith-needs-a-list"),
    ],
)
def test_bad_filter_body_is_refused_naming_the_field(
    model: type[BaseModel], body: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        model.model_validate(body)
    locations = {".".join(str(part) for part in error["loc"]) for error in raised.value.errors()}
    assert field in locations
    assert field in str(raised.value)
