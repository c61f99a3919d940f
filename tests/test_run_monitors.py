"""Beat's monitors of paused and cancelled runs, run in-process with the JSON a producer sends:
a pause that timed out fails, a cancelled run's unfinished task runs and subflows are cancelled,
and a run left CANCELLING too long is marked Cancelled. Each leaves alone what moved on."""

import datetime
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.settings import reset_settings
from models.types import now_utc
from tasks import deployments, flow_run_states, flow_runs, flows, maintenance, task_runs
from tests.celery_support import follow_ups, offline_app, ok  # noqa: F401

pytestmark = pytest.mark.usefixtures("db", "follow_ups")


@pytest.fixture
def flow_id() -> str:
    return str(ok(flows.create_flow, flow={"name": "etl"})["id"])


def create_run(flow_id: str, **fields: Any) -> str:
    return str(ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, **fields})["id"])


def force(run_id: str, state_type: str, **state: Any) -> dict[str, Any]:
    return ok(flow_runs.set_flow_run_state, flow_run_id=run_id, force=True, state={"type": state_type, **state})


def running_run(flow_id: str, **fields: Any) -> str:
    run_id = create_run(flow_id, **fields)
    force(run_id, "RUNNING")
    return run_id


def task_run(flow_run_id: str, key: str, state_type: str) -> str:
    return str(ok(task_runs.create_task_run, task_run={
        "flow_run_id": flow_run_id, "task_key": key, "dynamic_key": "0", "state": {"type": state_type},
    })["id"])


def state_of(run_id: str) -> tuple[str, str, str | None]:
    state = ok(flow_runs.read_flow_run, flow_run_id=run_id)["state"]
    return state["type"], state["name"], state["message"]


def task_state_types(session: Session, *task_run_ids: str) -> list[str]:
    session.expire_all()
    rows = {str(row.id): row.state_type.value for row in session.execute(sa.select(orm.TaskRun.id, orm.TaskRun.state_type))}
    return [rows[task_run_id] for task_run_id in task_run_ids]


def in_minutes(minutes: float) -> str:
    return (now_utc() + datetime.timedelta(minutes=minutes)).isoformat()


# ------------------------------------------------------------------------------ expired pauses


def test_a_pause_past_its_timeout_fails_and_gives_its_slot_back(flow_id: str) -> None:
    deployment = ok(deployments.create_deployment, deployment={"name": "d", "flow_id": flow_id, "concurrency_limit": 2})
    scheduled = {"type": "SCHEDULED", "state_details": {"scheduled_time": in_minutes(0)}}
    expired = create_run(flow_id, deployment_id=deployment["id"], state=scheduled)
    waiting = create_run(flow_id, deployment_id=deployment["id"], state=scheduled)
    for run_id in (expired, waiting):
        for state_type in ("PENDING", "RUNNING"):
            assert ok(flow_runs.set_flow_run_state, flow_run_id=run_id, state={"type": state_type})["status"] == "ACCEPT"
    force(expired, "PAUSED", state_details={"pause_timeout": in_minutes(-1)})
    force(waiting, "PAUSED", state_details={"pause_timeout": in_minutes(60)})

    assert maintenance.fail_expired_pauses.apply().get() == 1

    assert state_of(expired) == ("FAILED", "Failed", "The flow was paused and never resumed.")
    assert state_of(waiting)[0] == "PAUSED"
    slots = ok(deployments.read_deployment, deployment_id=deployment["id"])["global_concurrency_limit"]
    assert slots["active_slots"] == 1  # the blocking pause that still waits keeps its slot
    assert maintenance.fail_expired_pauses.apply().get() == 0
    assert len(ok(flow_run_states.read_flow_run_states, flow_run_id=expired)) == 5


def test_a_pause_without_a_timeout_waits_for_ever(flow_id: str) -> None:
    paused = running_run(flow_id)
    force(paused, "PAUSED")

    assert maintenance.fail_expired_pauses.apply().get() == 0
    assert state_of(paused)[0] == "PAUSED"


# -------------------------------------------------------------------------- cancelled runs' work


def test_a_cancelled_runs_unfinished_task_runs_are_cancelled(session: Session, flow_id: str) -> None:
    cancelled = running_run(flow_id)
    running, pending, completed = (task_run(cancelled, key, state_type) for key, state_type in
                                   (("a", "RUNNING"), ("b", "PENDING"), ("c", "COMPLETED")))
    elsewhere = task_run(running_run(flow_id), "d", "RUNNING")
    force(cancelled, "CANCELLED")

    report = maintenance.clean_up_cancelled_runs.apply().get()

    assert report == {"task_runs_cancelled": 2, "subflows_cancelled": 0, "cancelling_timed_out": 0}
    assert task_state_types(session, running, pending, completed, elsewhere) == [
        "CANCELLED", "CANCELLED", "COMPLETED", "RUNNING"]
    message = session.execute(
        sa.select(orm.TaskRunState.message).join(orm.TaskRun, orm.TaskRun.state_id == orm.TaskRunState.id)
        .where(orm.TaskRun.id == uuid.UUID(running))
    ).scalar_one()
    assert message == "The parent flow run was cancelled."
    session.rollback()  # let go of the database (SQLite: of its read lock)
    assert maintenance.clean_up_cancelled_runs.apply().get()["task_runs_cancelled"] == 0


def test_each_sweep_cancels_at_most_its_share_of_each_cancelled_runs_task_runs(
    session: Session, flow_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(maintenance, "TASK_RUNS_PER_CANCELLED_RUN", 2)
    runs = [running_run(flow_id) for _ in range(2)]
    task_runs = {run: [task_run(run, f"t{index}", "RUNNING") for index in range(3)] for run in runs}
    for run in runs:
        force(run, "CANCELLED")

    first = maintenance.clean_up_cancelled_runs.apply().get()["task_runs_cancelled"]
    per_run_after_first = [task_state_types(session, *task_runs[run]).count("CANCELLED") for run in runs]
    session.rollback()
    second = maintenance.clean_up_cancelled_runs.apply().get()["task_runs_cancelled"]

    assert (first, per_run_after_first, second) == (4, [2, 2], 2)
    assert task_state_types(session, *task_runs[runs[0]], *task_runs[runs[1]]) == ["CANCELLED"] * 6


def test_subflows_of_a_cancelled_run_are_cancelled_a_deployments_through_cancelling(flow_id: str) -> None:
    deployment = ok(deployments.create_deployment, deployment={"name": "d", "flow_id": flow_id})
    parent = running_run(flow_id)
    plain = running_run(flow_id, parent_task_run_id=task_run(parent, "plain", "RUNNING"))
    deployed = running_run(flow_id, parent_task_run_id=task_run(parent, "deployed", "RUNNING"),
                           deployment_id=deployment["id"])
    finished = running_run(flow_id, parent_task_run_id=task_run(parent, "finished", "RUNNING"))
    force(finished, "COMPLETED")
    still_running_parent = running_run(flow_id)
    untouched = running_run(flow_id, parent_task_run_id=task_run(still_running_parent, "kept", "RUNNING"))
    force(parent, "CANCELLED")

    report = maintenance.clean_up_cancelled_runs.apply().get()

    assert report["subflows_cancelled"] == 2
    assert state_of(plain) == ("CANCELLED", "Cancelled", "The parent flow run was cancelled.")
    assert state_of(deployed) == ("CANCELLING", "Cancelling", "The parent flow run was cancelled.")
    assert state_of(finished)[0] == "COMPLETED"
    assert state_of(untouched)[0] == "RUNNING"
    # A deployment's subflow already CANCELLING waits for its infrastructure: nothing more.
    assert maintenance.clean_up_cancelled_runs.apply().get()["subflows_cancelled"] == 0


def test_a_subflow_whose_parent_run_was_deleted_is_left_alone(flow_id: str) -> None:
    parent = running_run(flow_id)
    subflow = running_run(flow_id, parent_task_run_id=task_run(parent, "t", "RUNNING"))

    assert ok(flow_runs.delete_flow_run, flow_run_id=parent)  # its task runs go with it

    assert maintenance.clean_up_cancelled_runs.apply().get()["subflows_cancelled"] == 0
    assert state_of(subflow)[0] == "RUNNING"


# ------------------------------------------------------------------------ cancelling timeouts


def test_a_run_cancelling_past_the_timeout_is_marked_cancelled(session: Session, flow_id: str) -> None:
    stuck = running_run(flow_id)
    recent = running_run(flow_id)
    for run_id in (stuck, recent):
        assert ok(flow_runs.set_flow_run_state, flow_run_id=run_id, state={"type": "CANCELLING"})["status"] == "ACCEPT"
    long_ago = now_utc() - datetime.timedelta(minutes=6)
    session.execute(sa.update(orm.FlowRun).where(orm.FlowRun.id == uuid.UUID(stuck)).values(state_timestamp=long_ago))
    session.commit()

    report = maintenance.clean_up_cancelled_runs.apply().get()

    assert report["cancelling_timed_out"] == 1
    assert state_of(stuck) == (
        "CANCELLED", "Cancelled", "Flow run cancellation timed out; marked this flow run as Cancelled.")
    assert state_of(recent)[0] == "CANCELLING"


def test_the_cancelling_timeout_is_a_setting(session: Session, flow_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run_id = running_run(flow_id)
    ok(flow_runs.set_flow_run_state, flow_run_id=run_id, state={"type": "CANCELLING"})
    a_minute_ago = now_utc() - datetime.timedelta(minutes=1)
    session.execute(sa.update(orm.FlowRun).where(orm.FlowRun.id == uuid.UUID(run_id)).values(state_timestamp=a_minute_ago))
    session.commit()
    assert maintenance.clean_up_cancelled_runs.apply().get()["cancelling_timed_out"] == 0

    monkeypatch.setenv("FLOWRUNS_CANCELLING_TIMEOUT_SECONDS", "30")
    reset_settings()
    try:
        assert maintenance.clean_up_cancelled_runs.apply().get()["cancelling_timed_out"] == 1
    finally:
        monkeypatch.delenv("FLOWRUNS_CANCELLING_TIMEOUT_SECONDS")
        reset_settings()
    assert state_of(run_id)[0] == "CANCELLED"
