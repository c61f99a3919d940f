"""Every task body run in-process (no broker) with the JSON a foreign producer sends."""

import datetime
import re
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.errors import ObjectNotFoundError, ValidationError
from models.types import now_utc
from tasks import deployments, flow_run_states, flow_runs, flows, maintenance, task_runs, work_pools, work_queues
from tasks.base import follow_up_id
from tests.celery_support import apply, follow_ups, new_id, offline_app, ok  # noqa: F401

ISO_WITH_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")

pytestmark = pytest.mark.usefixtures("db", "follow_ups")


def iso(moment: datetime.datetime) -> str:
    return moment.isoformat()


@pytest.fixture
def flow_id() -> str:
    return str(ok(flows.create_flow, flow={"name": "etl", "tags": ["t"], "labels": {"team": "data"}})["id"])


@pytest.fixture
def pool() -> dict[str, Any]:
    return ok(work_pools.create_work_pool, work_pool={"name": "pool-a", "type": "process"})


def create_run(flow_id: str, **fields: Any) -> dict[str, Any]:
    return ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, **fields})


def propose(run_id: str, state_type: str, task_id: str | None = None, **state: Any) -> dict[str, Any]:
    return ok(flow_runs.set_flow_run_state, task_id, flow_run_id=run_id, state={"type": state_type, **state})


def failure(task: Any, **kwargs: Any) -> BaseException:
    result = apply(task, **kwargs)
    assert result.state == "FAILURE", f"{task.name} succeeded: {result.result!r}"
    return result.result  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- results' shapes


def test_create_flow_run_without_state_starts_pending_with_rest_shape(flow_id: str) -> None:
    run = create_run(flow_id, parameters={"x": 1})
    assert run["state"]["type"] == "PENDING" and run["state_type"] == "PENDING"
    assert run["flow_id"] == flow_id and run["parameters"] == {"x": 1}
    assert {"work_pool_id", "work_pool_name"} <= run.keys()
    for field in ("created", "updated", "expected_start_time"):
        assert ISO_WITH_OFFSET.match(run[field]), run[field]
    assert isinstance(run["total_run_time"], float) and isinstance(run["estimated_run_time"], float)


def test_create_without_state_holds_no_slot(session: Session, flow_id: str) -> None:
    deployment = ok(
        deployments.create_deployment,
        deployment={"name": "d", "flow_id": flow_id, "concurrency_limit": 1},
    )
    create_run(flow_id, deployment_id=deployment["id"])
    assert session.scalar(sa.select(sa.func.count()).select_from(orm.SlotHolding)) == 0


def test_create_flow_run_resolves_pool_and_queue_names(flow_id: str, pool: dict[str, Any]) -> None:
    queue = ok(work_queues.create_work_queue, work_queue={"name": "q", "work_pool_name": "pool-a"})
    by_pool = create_run(flow_id, work_pool_name="pool-a")
    assert by_pool["work_pool_id"] == pool["id"] and by_pool["work_pool_name"] == "pool-a"
    assert by_pool["work_queue_id"] == pool["default_queue_id"] and by_pool["work_queue_name"] == "default"
    by_queue = create_run(flow_id, work_pool_name="pool-a", work_queue_name="q")
    assert by_queue["work_queue_id"] == queue["id"] and by_queue["work_queue_name"] == "q"


def test_create_flow_run_with_unknown_names_is_not_found(flow_id: str) -> None:
    error = failure(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, "work_pool_name": "nope"})
    assert isinstance(error, ObjectNotFoundError) and "work_pool_name" in str(error)
    unknown_flow = str(uuid.uuid4())
    error = failure(flow_runs.create_flow_run, flow_run={"flow_id": unknown_flow})
    assert isinstance(error, ObjectNotFoundError) and unknown_flow in str(error)


def test_create_flow_run_with_state_keeps_it(flow_id: str) -> None:
    at = now_utc() + datetime.timedelta(hours=1)
    run = create_run(flow_id, state={"type": "SCHEDULED", "state_details": {"scheduled_time": iso(at)}})
    assert run["state"]["type"] == "SCHEDULED" and run["state"]["name"] == "Scheduled"
    assert datetime.datetime.fromisoformat(run["next_scheduled_start_time"]) == at


def test_read_flow_run_and_unknown_id(flow_id: str) -> None:
    run = create_run(flow_id)
    assert ok(flow_runs.read_flow_run, flow_run_id=run["id"])["id"] == run["id"]
    missing = str(uuid.uuid4())
    error = failure(flow_runs.read_flow_run, flow_run_id=missing)
    assert isinstance(error, ObjectNotFoundError) and missing in str(error)


def test_read_and_count_flow_runs_with_filters_sort_and_paging(flow_id: str) -> None:
    ids = [create_run(flow_id, name=f"run-{i}", tags=["even" if i % 2 == 0 else "odd"])["id"] for i in range(5)]
    everything = ok(flow_runs.read_flow_runs)
    assert sorted(run["id"] for run in everything) == sorted(ids)
    by_name = ok(flow_runs.read_flow_runs, sort="NAME_ASC", offset=1, limit=2)
    assert [run["name"] for run in by_name] == ["run-1", "run-2"]
    even = {"tags": {"all_": ["even"]}}
    assert len(ok(flow_runs.read_flow_runs, flow_run_filter=even)) == 3
    assert ok(flow_runs.count_flow_runs, flow_run_filter=even) == 3
    assert ok(flow_runs.count_flow_runs) == 5
    assert ok(flow_runs.count_flow_runs, deployment_filter={}) == 0


def test_read_flow_runs_returns_at_most_200(session: Session, flow_id: str) -> None:
    session.execute(
        sa.insert(orm.FlowRun),
        [{"id": uuid.uuid4(), "name": f"r{i}", "flow_id": uuid.UUID(flow_id)} for i in range(201)],
    )
    session.commit()
    assert len(ok(flow_runs.read_flow_runs)) == 200
    assert len(ok(flow_runs.read_flow_runs, offset=200)) == 1
    assert len(ok(flow_runs.read_flow_runs, limit=200)) == 200


def test_update_flow_run_writes_only_given_fields_and_false_for_unknown(flow_id: str) -> None:
    run = create_run(flow_id, parameters={"keep": True}, tags=["a"])
    assert ok(flow_runs.update_flow_run, flow_run_id=run["id"], flow_run={"flow_version": "2"}) is True
    updated = ok(flow_runs.read_flow_run, flow_run_id=run["id"])
    assert updated["flow_version"] == "2" and updated["parameters"] == {"keep": True} and updated["tags"] == ["a"]
    assert ok(flow_runs.update_flow_run, flow_run_id=new_id(), flow_run={"name": "x"}) is False


# ------------------------------------------------------------------------------- transitions


def test_set_flow_run_state_through_a_whole_life(flow_id: str, follow_ups: list[Any]) -> None:
    run = create_run(flow_id)
    running = propose(run["id"], "RUNNING")
    assert running["status"] == "ACCEPT" and running["state"]["type"] == "RUNNING"
    assert running["details"] == {"type": "accept_details"}
    assert follow_ups == []
    completed_id = new_id()
    completed = propose(run["id"], "COMPLETED", completed_id)
    assert completed["status"] == "ACCEPT" and completed["state"]["type"] == "COMPLETED"
    assert ISO_WITH_OFFSET.match(completed["state"]["timestamp"])
    stored = ok(flow_runs.read_flow_run, flow_run_id=run["id"])
    assert stored["state_type"] == "COMPLETED" and stored["total_run_time"] >= 0.0
    assert follow_ups == []  # the run held no slot: nothing to clean up after


def limited_run(flow_id: str) -> dict[str, Any]:
    deployment = ok(
        deployments.create_deployment,
        deployment={"name": "limited", "flow_id": flow_id, "concurrency_limit": 1},
    )
    return create_run(flow_id, deployment_id=deployment["id"], state={"type": "SCHEDULED"})


def test_a_terminal_transition_that_released_a_slot_sends_a_cleanup(flow_id: str, follow_ups: list[Any]) -> None:
    run = limited_run(flow_id)
    propose(run["id"], "PENDING")
    propose(run["id"], "RUNNING")
    assert follow_ups == []
    completed_id = new_id()
    propose(run["id"], "COMPLETED", completed_id)
    # The slot went back in the transition; the follow-up, under an id derived from the request,
    # is the retried safety net, in the mode that spares a run that is active again.
    cleanup = flow_runs.CLEANUP
    assert [(f.name, f.kwargs, f.task_id) for f in follow_ups] == [
        (cleanup, {"flow_run_id": run["id"], "only_if_inactive": True}, follow_up_id(completed_id, cleanup))
    ]
    # A replay of the request cannot know what the first copy released: it sends the same follow-up.
    propose(run["id"], "COMPLETED", completed_id)
    assert [f.task_id for f in follow_ups] == [follow_up_id(completed_id, cleanup)] * 2


def test_a_late_cleanup_follow_up_spares_a_slot_secured_again(
    session: Session, flow_id: str, follow_ups: list[Any]
) -> None:
    run = limited_run(flow_id)
    propose(run["id"], "PENDING")
    propose(run["id"], "CRASHED")
    assert len(follow_ups) == 1
    propose(run["id"], "SCHEDULED")
    propose(run["id"], "PENDING")  # secures the slot again before the follow-up runs
    late = follow_ups[0]
    assert ok(flow_runs.cleanup_flow_run_concurrency_slots, late.task_id, **late.kwargs) is None
    assert session.scalar(sa.select(sa.func.count()).select_from(orm.SlotHolding)) == 1
    assert session.scalar(sa.select(orm.ConcurrencyLimit.active_slots)) == 1
    session.rollback()  # end the read (on SQLite, every transaction holds the write lock)
    # Asked for by a producer (no mode), cleanup releases whatever the run holds, as Prefect's does.
    assert ok(flow_runs.cleanup_flow_run_concurrency_slots, flow_run_id=run["id"]) is None
    assert session.scalar(sa.select(sa.func.count()).select_from(orm.SlotHolding)) == 0
    assert session.scalar(sa.select(orm.ConcurrencyLimit.active_slots)) == 0


def test_task_id_is_the_transition_id_unless_the_state_carries_one(flow_id: str) -> None:
    run = create_run(flow_id)
    task_id = new_id()
    result = propose(run["id"], "RUNNING", task_id)
    assert result["state"]["state_details"]["transition_id"] == task_id
    own = new_id()
    result = propose(run["id"], "COMPLETED", state_details={"transition_id": own})
    assert result["state"]["state_details"]["transition_id"] == own


def test_a_task_id_that_is_not_a_uuid_still_gives_a_transition_id(flow_id: str) -> None:
    run = create_run(flow_id)
    result = propose(run["id"], "RUNNING", "my-request-42")
    assert result["state"]["state_details"]["transition_id"] == str(flow_runs.transition_id_for("my-request-42"))


def test_core_policy_applies_unless_forced(flow_id: str) -> None:
    run = create_run(flow_id)  # PENDING
    again = propose(run["id"], "PENDING")
    assert again["status"] == "ABORT" and again["state"]["type"] == "PENDING"
    forced = ok(flow_runs.set_flow_run_state, flow_run_id=run["id"], state={"type": "PENDING"}, force=True)
    assert forced["status"] == "ACCEPT"


def test_set_state_of_unknown_run_is_not_found() -> None:
    missing = new_id()
    error = failure(flow_runs.set_flow_run_state, flow_run_id=missing, state={"type": "RUNNING"})
    assert isinstance(error, ObjectNotFoundError) and missing in str(error)


def test_read_flow_run_states_is_the_history_oldest_first(flow_id: str) -> None:
    run = create_run(flow_id)
    propose(run["id"], "RUNNING")
    propose(run["id"], "COMPLETED")
    states = ok(flow_run_states.read_flow_run_states, flow_run_id=run["id"])
    assert [s["type"] for s in states] == ["PENDING", "RUNNING", "COMPLETED"]
    missing = new_id()
    error = failure(flow_run_states.read_flow_run_states, flow_run_id=missing)
    assert isinstance(error, ObjectNotFoundError) and missing in str(error)


# ----------------------------------------------------------------------- delete and cleanup


def test_delete_flow_run_then_false(flow_id: str, follow_ups: list[Any]) -> None:
    run = create_run(flow_id)
    assert ok(flow_runs.delete_flow_run, flow_run_id=run["id"]) is True
    assert follow_ups == []  # it held no slot
    assert ok(flow_runs.delete_flow_run, flow_run_id=run["id"]) is False
    assert isinstance(failure(flow_runs.read_flow_run, flow_run_id=run["id"]), ObjectNotFoundError)


def test_deleting_a_run_that_holds_a_slot_releases_it_and_a_cleanup_follows(
    session: Session, flow_id: str, follow_ups: list[Any]
) -> None:
    run = limited_run(flow_id)
    propose(run["id"], "PENDING")
    task_id = new_id()
    assert ok(flow_runs.delete_flow_run, task_id, flow_run_id=run["id"]) is True
    assert [f.task_id for f in follow_ups] == [follow_up_id(task_id, flow_runs.CLEANUP)]
    assert session.scalar(sa.select(orm.ConcurrencyLimit.active_slots)) == 0


def test_cleanup_of_unknown_run_is_a_no_op() -> None:
    assert ok(flow_runs.cleanup_flow_run_concurrency_slots, flow_run_id=new_id()) is None


def test_slot_is_taken_on_pending_and_released_on_completion(flow_id: str) -> None:
    deployment = ok(
        deployments.create_deployment,
        deployment={"name": "limited", "flow_id": flow_id, "concurrency_limit": 1},
    )
    run = create_run(flow_id, deployment_id=deployment["id"], state={"type": "SCHEDULED"})
    assert propose(run["id"], "PENDING")["status"] == "ACCEPT"
    read = ok(deployments.read_deployment, deployment_id=deployment["id"])
    assert read["concurrency_limit"] == 1
    assert read["global_concurrency_limit"]["limit"] == 1 and read["global_concurrency_limit"]["active_slots"] == 1
    propose(run["id"], "RUNNING")
    propose(run["id"], "COMPLETED")
    assert ok(flow_runs.cleanup_flow_run_concurrency_slots, flow_run_id=run["id"]) is None
    read = ok(deployments.read_deployment, deployment_id=deployment["id"])
    assert read["global_concurrency_limit"]["active_slots"] == 0


# ------------------------------------------------------------------ related objects and graph


def test_create_flow_returns_the_existing_flow_for_a_known_name(flow_id: str) -> None:
    again = ok(flows.create_flow, flow={"name": "etl"})
    assert again["id"] == flow_id and again["tags"] == ["t"]


def test_read_deployment_unknown_is_not_found() -> None:
    missing = new_id()
    error = failure(deployments.read_deployment, deployment_id=missing)
    assert isinstance(error, ObjectNotFoundError) and missing in str(error)


def test_deployment_limit_zero_is_a_validation_error(flow_id: str) -> None:
    error = failure(
        deployments.create_deployment, deployment={"name": "d", "flow_id": flow_id, "concurrency_limit": 0}
    )
    assert isinstance(error, ValidationError) and "deployment.concurrency_limit" in str(error)


def test_work_pool_name_taken_is_a_validation_error(pool: dict[str, Any]) -> None:
    error = failure(work_pools.create_work_pool, work_pool={"name": "pool-a"})
    assert isinstance(error, ValidationError) and "work_pool.name" in str(error)


def test_work_queue_result_names_its_pool(pool: dict[str, Any]) -> None:
    queue = ok(work_queues.create_work_queue, work_queue={"name": "q", "work_pool_name": "pool-a", "priority": 3})
    assert queue["work_pool_id"] == pool["id"] and queue["work_pool_name"] == "pool-a" and queue["priority"] == 3
    in_default = ok(work_queues.create_work_queue, work_queue={"name": "loose"})
    assert in_default["work_pool_name"] == "default-agent-pool"


def test_pool_and_queue_results_carry_prefects_active_slots_and_queue_filter(pool: dict[str, Any]) -> None:
    assert pool["active_slots"] is None
    limited = ok(work_pools.create_work_pool, work_pool={"name": "limited", "type": "process", "concurrency_limit": 2})
    assert limited["active_slots"] == 0
    queue = ok(work_queues.create_work_queue, work_queue={"name": "q", "work_pool_name": "pool-a",
                                                          "concurrency_limit": 1})
    assert (queue["active_slots"], queue["filter"]) == (0, None)


def test_task_runs_dependencies_and_graph(flow_id: str) -> None:
    run = create_run(flow_id)
    propose(run["id"], "RUNNING")  # a task run starts only inside a running flow run
    upstream = ok(
        task_runs.create_task_run,
        task_run={"flow_run_id": run["id"], "task_key": "extract", "dynamic_key": "0", "name": "extract"},
    )
    downstream = ok(
        task_runs.create_task_run,
        task_run={
            "flow_run_id": run["id"], "task_key": "load", "dynamic_key": "0", "name": "load",
            "task_inputs": {"rows": [{"input_type": "task_run", "id": upstream["id"]}]},
            "state": {"type": "PENDING"},
        },
    )
    assert downstream["state"]["type"] == "PENDING"
    result = ok(task_runs.set_task_run_state, task_run_id=upstream["id"], state={"type": "RUNNING"})
    assert result["status"] == "ACCEPT" and result["state"]["type"] == "RUNNING"
    dependencies = {d["id"]: d for d in ok(flow_runs.read_task_run_dependencies, flow_run_id=run["id"])}
    assert dependencies[downstream["id"]]["upstream_dependencies"] == [{"input_type": "task_run", "id": upstream["id"]}]
    graph = ok(flow_runs.read_flow_run_graph, flow_run_id=run["id"])
    assert {node_id for node_id, _ in graph["nodes"]} == {upstream["id"], downstream["id"]}
    since = ok(flow_runs.read_flow_run_graph, flow_run_id=run["id"], since=iso(now_utc()))
    assert {node_id for node_id, _ in since["nodes"]} == {upstream["id"], downstream["id"]}  # none has ended
    for task in (flow_runs.read_task_run_dependencies, flow_runs.read_flow_run_graph):
        missing = new_id()
        error = failure(task, flow_run_id=missing)
        assert isinstance(error, ObjectNotFoundError) and missing in str(error)


def test_set_task_run_state_of_unknown_task_run_is_not_found() -> None:
    missing = new_id()
    error = failure(task_runs.set_task_run_state, task_run_id=missing, state={"type": "RUNNING"})
    assert isinstance(error, ObjectNotFoundError) and missing in str(error)


# -------------------------------------------------------------------------------- maintenance


def test_mark_late_runs_marks_overdue_scheduled_runs_once(flow_id: str) -> None:
    overdue = create_run(
        flow_id, state={"type": "SCHEDULED", "state_details": {"scheduled_time": iso(now_utc() - datetime.timedelta(minutes=5))}}
    )
    future = create_run(
        flow_id, state={"type": "SCHEDULED", "state_details": {"scheduled_time": iso(now_utc() + datetime.timedelta(hours=1))}}
    )
    running = create_run(flow_id)
    propose(running["id"], "RUNNING")
    assert maintenance.mark_late_runs.apply().get() == 1
    late = ok(flow_runs.read_flow_run, flow_run_id=overdue["id"])
    assert late["state"]["name"] == "Late" and late["state"]["type"] == "SCHEDULED"
    assert late["state"]["state_details"]["scheduled_time"] == overdue["state"]["state_details"]["scheduled_time"]
    assert ok(flow_runs.read_flow_run, flow_run_id=future["id"])["state"]["name"] == "Scheduled"
    assert maintenance.mark_late_runs.apply().get() == 0
    assert len(ok(flow_run_states.read_flow_run_states, flow_run_id=overdue["id"])) == 2


def test_prune_processed_requests_drops_only_old_rows(session: Session, flow_id: str) -> None:
    old = now_utc() - datetime.timedelta(days=30)
    session.add(orm.ProcessedRequest(task_id="old", name="flows.create_flow", outcome=None, created=old))
    session.commit()
    assert maintenance.prune_processed_requests.apply().get() == 1
    remaining = session.scalars(sa.select(orm.ProcessedRequest.name)).all()
    assert remaining == ["flows.create_flow"]  # the fixture's own create_flow request


def test_prune_goes_batch_by_batch_oldest_first(
    session: Session, flow_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "PRUNE_BATCH", 3)
    monkeypatch.setattr(maintenance, "PRUNE_BATCHES_PER_FIRING", 2)
    old = now_utc() - datetime.timedelta(days=30)
    session.add_all([orm.ProcessedRequest(task_id=f"old-{index}", name="flows.create_flow", outcome=None,
                                          created=old + datetime.timedelta(seconds=index)) for index in range(8)])
    session.commit()

    assert maintenance.prune_processed_requests.apply().get() == 6  # two batches of three this firing
    left = session.scalars(sa.select(orm.ProcessedRequest.task_id).where(orm.ProcessedRequest.task_id.like("old-%"))).all()
    assert sorted(left) == ["old-6", "old-7"]
    session.rollback()  # let go of the database (SQLite: of its write lock)
    assert maintenance.prune_processed_requests.apply().get() == 2


def test_reconcile_reports_what_it_fixed(session: Session, flow_id: str) -> None:
    deployment = ok(
        deployments.create_deployment, deployment={"name": "d", "flow_id": flow_id, "concurrency_limit": 3}
    )
    limit_id = uuid.UUID(deployment["concurrency_limit_id"])
    session.execute(sa.update(orm.ConcurrencyLimit).where(orm.ConcurrencyLimit.id == limit_id).values(active_slots=2))
    session.commit()
    report = maintenance.reconcile_concurrency_slots.apply().get()
    assert report == {"holdings_released": 0, "limits_corrected": 1, "slots_adjusted": 2}
    assert maintenance.reconcile_concurrency_slots.apply().get()["limits_corrected"] == 0
