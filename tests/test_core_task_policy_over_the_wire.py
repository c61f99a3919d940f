"""`task_runs.set_task_run_state` through a real worker: Prefect's core task policy unless `force`,
every rule seen from a producer that sends JSON by task name, and what the database then holds."""

import datetime
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from models import orm
from models.database import unit_of_work
from models.types import now_utc
from orchestration.jitter import lower_bound_multiple
from tests.celery_support import Worker, new_id, worker  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]

PERSISTED = {"type": "reference", "storage_key": "s3://bucket/result"}
NOT_RUNNING = "The enclosing flow must be running to begin task execution."


# -- helpers ----------------------------------------------------------------------------------


def iso(moment: datetime.datetime) -> str:
    return moment.isoformat()


def parse(value: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(value)


def flow_run(worker: Worker, *flow_states: dict[str, Any]) -> dict[str, Any]:
    """A flow run created over the wire (PENDING), then moved through `flow_states`, forced."""
    flow = worker.call("flows.create_flow", flow={"name": "wire-tasks"})
    run = worker.call("flow_runs.create_flow_run", flow_run={"flow_id": flow["id"]})
    for state in flow_states:
        result = worker.call("flow_runs.set_flow_run_state", flow_run_id=run["id"], state=state, force=True)
        assert result["status"] == "ACCEPT", result
    return run


def running_flow_run(worker: Worker) -> dict[str, Any]:
    return flow_run(worker, {"type": "RUNNING"})


def task_run(worker: Worker, flow_run_id: str, **fields: Any) -> dict[str, Any]:
    body = {"flow_run_id": flow_run_id, "task_key": f"t-{uuid.uuid4().hex[:8]}", "dynamic_key": "0",
            "state": {"type": "PENDING"}, **fields}
    return worker.call("task_runs.create_task_run", task_run=body)  # type: ignore[no-any-return]


def propose(
    worker: Worker, task_run_id: str, state_type: str, task_id: str | None = None, force: bool = False, **state: Any
) -> dict[str, Any]:
    return worker.call(  # type: ignore[no-any-return]
        "task_runs.set_task_run_state", task_id, task_run_id=task_run_id, state={"type": state_type, **state},
        force=force,
    )


def stored(task_run_id: str) -> tuple[str | None, str | None, int, int]:
    """The task run as the database holds it: state type and name, run_count, flow_run_run_count."""
    with unit_of_work() as session:
        row = session.get(orm.TaskRun, uuid.UUID(task_run_id))
        assert row is not None
        state_type = row.state_type.value if row.state_type else None
        return state_type, row.state_name, row.run_count, row.flow_run_run_count


def history(task_run_id: str) -> list[str]:
    with unit_of_work() as session:
        return list(session.execute(
            sa.select(orm.TaskRunState.name)
            .where(orm.TaskRunState.task_run_id == uuid.UUID(task_run_id))
            .order_by(orm.TaskRunState.timestamp)
        ).scalars())


def delay_of(result: dict[str, Any], since: datetime.datetime) -> float:
    return (parse(result["state"]["state_details"]["scheduled_time"]) - since).total_seconds()


# -- the enclosing flow run -----------------------------------------------------------------------


def test_task_cannot_start_while_its_flow_run_is_pending(worker: Worker) -> None:
    task = task_run(worker, flow_run(worker)["id"])

    result = propose(worker, task["id"], "RUNNING")

    assert (result["status"], result["details"]["reason"]) == ("ABORT", NOT_RUNNING)
    assert result["state"]["type"] == "PENDING"
    assert stored(task["id"]) == ("PENDING", "Pending", 0, 0)
    assert history(task["id"]) == ["Pending"]


def test_forced_start_runs_the_minimal_policy_even_while_the_flow_run_is_pending(worker: Worker) -> None:
    task = task_run(worker, flow_run(worker)["id"])

    result = propose(worker, task["id"], "RUNNING", force=True)

    assert (result["status"], result["state"]["type"], result["state"]["name"]) == ("ACCEPT", "RUNNING", "Running")
    assert stored(task["id"]) == ("RUNNING", "Running", 1, 0)
    assert history(task["id"]) == ["Pending", "Running"]


def test_task_of_a_paused_flow_run_is_paused_not_ready(worker: Worker) -> None:
    run = running_flow_run(worker)
    timeout = now_utc() + datetime.timedelta(minutes=10)
    paused = worker.call(
        "flow_runs.set_flow_run_state", flow_run_id=run["id"],
        state={"type": "PAUSED", "state_details": {"pause_timeout": iso(timeout)}},
    )
    assert paused["status"] == "ACCEPT"
    task = task_run(worker, run["id"])

    result = propose(worker, task["id"], "RUNNING")

    assert result["status"] == "REJECT"
    assert result["details"]["reason"] == (
        f"The flow is paused, new tasks can execute after resuming flow run: {run['id']}."
    )
    assert (result["state"]["type"], result["state"]["name"]) == ("PAUSED", "NotReady")
    assert parse(result["state"]["state_details"]["pause_timeout"]) == timeout
    assert result["state"]["state_details"]["pause_reschedule"] is False
    assert stored(task["id"]) == ("PAUSED", "NotReady", 0, 0)
    assert history(task["id"]) == ["Pending", "NotReady"]


# -- retries, reruns and the flow attempt -----------------------------------------------------------


def test_failure_with_retries_left_awaits_retry_with_its_listed_delays(worker: Worker) -> None:
    task = task_run(worker, running_flow_run(worker)["id"], empirical_policy={"retries": 2, "retry_delay": [0, 45]})

    started = propose(worker, task["id"], "RUNNING")
    assert (started["status"], started["state"]["name"]) == ("ACCEPT", "Running")
    assert stored(task["id"])[3] == 1
    first = propose(worker, task["id"], "FAILED", message="boom")
    assert (first["status"], first["details"]["reason"]) == ("REJECT", "Retrying")
    written = first["state"]
    assert (written["type"], written["name"], written["message"]) == ("SCHEDULED", "AwaitingRetry", "boom")
    retried = propose(worker, task["id"], "RUNNING")
    assert (retried["status"], retried["state"]["name"]) == ("ACCEPT", "Retrying")
    before = now_utc()
    second = propose(worker, task["id"], "FAILED")
    assert second["state"]["name"] == "AwaitingRetry"
    assert 44 <= delay_of(second, before) <= 46

    early = propose(worker, task["id"], "RUNNING")

    assert (early["status"], early["details"]["reason"]) == ("WAIT", "Scheduled time is in the future")
    assert 43 <= early["details"]["delay_seconds"] <= 45
    assert stored(task["id"]) == ("SCHEDULED", "AwaitingRetry", 2, 1)
    assert history(task["id"]) == ["Pending", "Running", "AwaitingRetry", "Retrying", "AwaitingRetry"]


def test_jittered_retry_delay_stays_within_its_window(worker: Worker) -> None:
    policy = {"retries": 6, "retry_delay": 100, "retry_jitter_factor": 0.5}
    task = task_run(worker, running_flow_run(worker)["id"], empirical_policy=policy)
    delays = []
    for _ in range(6):
        propose(worker, task["id"], "RUNNING", force=True)
        before = now_utc()
        result = propose(worker, task["id"], "FAILED")
        assert result["state"]["name"] == "AwaitingRetry"
        delays.append(delay_of(result, before))

    assert all(100 * lower_bound_multiple(1.5) - 1 <= delay <= 151 for delay in delays), delays
    assert any(abs(delay - 100) > 1 for delay in delays), delays  # jittered, not 100 every time


def test_exhausted_or_not_retriable_failure_stands(worker: Worker) -> None:
    task = task_run(worker, running_flow_run(worker)["id"], empirical_policy={"retries": 1})
    propose(worker, task["id"], "RUNNING")

    refused = propose(worker, task["id"], "FAILED", state_details={"retriable": False})

    assert (refused["status"], refused["state"]["type"]) == ("ACCEPT", "FAILED")
    assert history(task["id"]) == ["Pending", "Running", "Failed"]


def test_another_start_is_named_rerunning(worker: Worker) -> None:
    task = task_run(worker, running_flow_run(worker)["id"])
    propose(worker, task["id"], "RUNNING")
    propose(worker, task["id"], "PENDING")

    result = propose(worker, task["id"], "RUNNING")

    assert (result["status"], result["state"]["name"]) == ("ACCEPT", "Rerunning")
    assert stored(task["id"]) == ("RUNNING", "Rerunning", 2, 1)


def test_failed_task_rerun_in_a_retried_flow_run_is_named_retrying(worker: Worker) -> None:
    run = running_flow_run(worker)
    task = task_run(worker, run["id"])
    propose(worker, task["id"], "RUNNING")
    propose(worker, task["id"], "FAILED")
    for state_type in ("FAILED", "RUNNING"):  # the flow run's second attempt
        worker.call("flow_runs.set_flow_run_state", flow_run_id=run["id"], state={"type": state_type}, force=True)

    result = propose(worker, task["id"], "RUNNING")

    assert (result["status"], result["state"]["name"]) == ("ACCEPT", "Retrying")
    assert stored(task["id"]) == ("RUNNING", "Retrying", 1, 2)


# -- terminal states ----------------------------------------------------------------------------


def test_completed_task_with_persisted_result_cannot_run_again(worker: Worker) -> None:
    task = task_run(worker, running_flow_run(worker)["id"])
    propose(worker, task["id"], "RUNNING")
    propose(worker, task["id"], "COMPLETED", data=PERSISTED)

    again = propose(worker, task["id"], "RUNNING")
    crashed = propose(worker, task["id"], "CRASHED")

    assert (again["status"], again["details"]["reason"]) == ("REJECT", "This run is already completed.")
    assert (again["state"]["type"], again["state"]["data"]) == ("COMPLETED", PERSISTED)
    assert (crashed["status"], crashed["details"]["reason"]) == ("ABORT", "Run is already COMPLETED.")
    assert stored(task["id"]) == ("COMPLETED", "Completed", 1, 1)
    assert history(task["id"]) == ["Pending", "Running", "Completed"]


# -- scheduling -----------------------------------------------------------------------------------


def test_scheduled_task_keeps_its_time_when_pending_and_waits_for_it(worker: Worker) -> None:
    when = now_utc() + datetime.timedelta(seconds=90)
    scheduled = {"type": "SCHEDULED", "state_details": {"scheduled_time": iso(when)}}
    task = task_run(worker, running_flow_run(worker)["id"], state=scheduled)

    pending = propose(worker, task["id"], "PENDING")
    early = propose(worker, task["id"], "RUNNING")

    assert parse(pending["state"]["state_details"]["scheduled_time"]) == when
    assert (early["status"], early["details"]["reason"]) == ("WAIT", "Scheduled time is in the future")
    assert 88 <= early["details"]["delay_seconds"] <= 90
    assert history(task["id"]) == ["Scheduled", "Pending"]


# -- the cache ----------------------------------------------------------------------------------


def test_cached_result_is_returned_named_cached_until_it_expires_or_is_refreshed(worker: Worker) -> None:
    run_id = running_flow_run(worker)["id"]
    later, earlier = now_utc() + datetime.timedelta(hours=1), now_utc() - datetime.timedelta(seconds=1)
    for key, expiration in (("fresh", later), ("stale", earlier)):
        producer = task_run(worker, run_id)
        propose(worker, producer["id"], "RUNNING")
        details = {"cache_key": key, "cache_expiration": iso(expiration)}
        assert propose(worker, producer["id"], "COMPLETED", data=PERSISTED, state_details=details)["status"] == "ACCEPT"
    hit, expired, refreshed = (task_run(worker, run_id) for _ in range(3))

    cached = propose(worker, hit["id"], "RUNNING", state_details={"cache_key": "fresh"})
    missed = propose(worker, expired["id"], "RUNNING", state_details={"cache_key": "stale"})
    refresh = propose(worker, refreshed["id"], "RUNNING", state_details={"cache_key": "fresh", "refresh_cache": True})

    assert (cached["status"], cached["details"]["reason"]) == ("REJECT", "Retrieved state from cache")
    written = cached["state"]
    assert (written["type"], written["name"], written["data"]) == ("COMPLETED", "Cached", PERSISTED)
    assert stored(hit["id"]) == ("COMPLETED", "Cached", 0, 0)
    assert history(hit["id"]) == ["Pending", "Cached"]
    assert (missed["status"], missed["state"]["name"]) == ("ACCEPT", "Running")
    assert (refresh["status"], refresh["state"]["name"]) == ("ACCEPT", "Running")


def test_over_long_cache_key_is_rejected_with_prefects_reason(worker: Worker) -> None:
    task = task_run(worker, running_flow_run(worker)["id"])
    propose(worker, task["id"], "RUNNING")

    result = propose(worker, task["id"], "COMPLETED", data=PERSISTED, state_details={"cache_key": "k" * 2001})

    assert result["status"] == "REJECT"
    assert result["details"]["reason"] == "Cache key exceeded maximum allowed length of 2000 characters."
    assert (result["state"]["type"], result["state"]["name"]) == ("COMPLETED", "Completed")
    assert history(task["id"]) == ["Pending", "Running", "Completed"]


# -- exactly once ---------------------------------------------------------------------------------


def test_redelivered_set_task_run_state_writes_one_state(worker: Worker) -> None:
    task = task_run(worker, running_flow_run(worker)["id"], empirical_policy={"retries": 3, "retry_delay": 60})
    propose(worker, task["id"], "RUNNING")
    task_id = new_id()

    first = propose(worker, task["id"], "FAILED", task_id)
    worker.producer.AsyncResult(task_id).forget()  # so the second wait sees the second copy's result
    second = propose(worker, task["id"], "FAILED", task_id)

    assert first["state"]["name"] == "AwaitingRetry" and second == first
    assert history(task["id"]) == ["Pending", "Running", "AwaitingRetry"]
    assert stored(task["id"])[2] == 1
