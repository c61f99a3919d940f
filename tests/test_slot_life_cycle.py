"""A slot is held for as long as the run's process may be alive, over the wire.

A run keeps its deployment slot while PENDING, RUNNING, CANCELLING, in a blocking pause or in
AwaitingRetry, and gives it back for anything else; a run that reaches RUNNING without a slot must
secure one (ENQUEUE waits, CANCEL_NEW cancels). Every request here is a task sent by name to a
real worker; the counts are those the deployment reports.
"""

import datetime
import uuid
from typing import Any

import pytest

from models.types import now_utc
from tests.celery_support import Worker, worker  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]


def past() -> str:
    return (now_utc() - datetime.timedelta(minutes=1)).isoformat()


class Deployment:
    """A limit-1 deployment and the runs sent through it, driven by task name."""

    def __init__(self, worker: Worker, strategy: str = "ENQUEUE") -> None:
        self.call = worker.call
        flow = self.call("flows.create_flow", flow={"name": f"slots-{uuid.uuid4().hex[:8]}"})
        self.flow_id = flow["id"]
        self.id = self.call("deployments.create_deployment", deployment={
            "name": "limited", "flow_id": self.flow_id, "concurrency_limit": 1,
            "concurrency_options": {"collision_strategy": strategy},
        })["id"]

    def run(self, state: dict[str, Any] | None = None, **fields: Any) -> str:
        flow_run = {"flow_id": self.flow_id, "deployment_id": self.id,
                    "state": state or {"type": "SCHEDULED", "state_details": {"scheduled_time": past()}}, **fields}
        return str(self.call("flow_runs.create_flow_run", flow_run=flow_run)["id"])

    def propose(self, run_id: str, state_type: str, **state: Any) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "flow_runs.set_flow_run_state", flow_run_id=run_id, state={"type": state_type, **state})
        return result

    def started(self, **fields: Any) -> str:
        run_id = self.run(**fields)
        assert self.propose(run_id, "PENDING")["status"] == "ACCEPT"
        assert self.propose(run_id, "RUNNING")["status"] == "ACCEPT"
        return run_id

    def slots_in_use(self) -> int:
        return int(self.call("deployments.read_deployment", deployment_id=self.id)["global_concurrency_limit"]["active_slots"])


def outcome(result: dict[str, Any]) -> tuple[str, str, str]:
    return result["status"], result["state"]["type"], result["state"]["name"]


def test_an_in_process_retry_keeps_its_slot_while_another_run_waits(worker: Worker) -> None:
    deployment = Deployment(worker)
    retrying = deployment.started(empirical_policy={"retries": 1})

    assert outcome(deployment.propose(retrying, "FAILED")) == ("REJECT", "SCHEDULED", "AwaitingRetry")
    assert deployment.slots_in_use() == 1
    waiting = deployment.run()
    assert outcome(deployment.propose(waiting, "PENDING")) == ("REJECT", "SCHEDULED", "AwaitingConcurrencySlot")

    assert deployment.propose(retrying, "RUNNING")["status"] == "ACCEPT"
    assert outcome(deployment.propose(waiting, "PENDING")) == ("REJECT", "SCHEDULED", "AwaitingConcurrencySlot")
    assert deployment.slots_in_use() == 1
    assert outcome(deployment.propose(retrying, "COMPLETED")) == ("ACCEPT", "COMPLETED", "Completed")
    assert deployment.slots_in_use() == 0
    assert deployment.propose(waiting, "PENDING")["status"] == "ACCEPT"


def test_the_retry_state_names_the_slot_the_run_keeps(worker: Worker) -> None:
    deployment = Deployment(worker)
    retrying = deployment.started(empirical_policy={"retries": 1})
    running = worker.call("flow_runs.read_flow_run", flow_run_id=retrying)["state"]
    lease_id = running["state_details"]["deployment_concurrency_lease_id"]

    retry = deployment.propose(retrying, "FAILED")

    assert outcome(retry) == ("REJECT", "SCHEDULED", "AwaitingRetry")
    assert lease_id is not None
    assert retry["state"]["state_details"]["deployment_concurrency_lease_id"] == lease_id


@pytest.mark.parametrize("force", [False, True], ids=["core-policy", "forced"])
def test_a_proposed_awaiting_retry_leaves_the_process_and_gives_the_slot_back(worker: Worker, force: bool) -> None:
    """Only the retry a rule puts in place of a failure runs in the same process. A run that
    reschedules itself as AwaitingRetry (as a process does when it is told to stop) is gone."""
    deployment = Deployment(worker)
    rescheduled = deployment.started()

    result = worker.call("flow_runs.set_flow_run_state", flow_run_id=rescheduled, force=force, state={
        "type": "SCHEDULED", "name": "AwaitingRetry", "state_details": {"scheduled_time": past()}})

    assert outcome(result) == ("ACCEPT", "SCHEDULED", "AwaitingRetry")
    assert deployment.slots_in_use() == 0
    other = deployment.run()
    assert deployment.propose(other, "PENDING")["status"] == "ACCEPT"
    assert outcome(deployment.propose(rescheduled, "PENDING")) == ("REJECT", "SCHEDULED", "AwaitingConcurrencySlot")
    assert deployment.slots_in_use() == 1


def test_a_blocking_pause_keeps_its_slot_and_a_suspended_run_gives_it_back(worker: Worker) -> None:
    deployment = Deployment(worker)
    paused = deployment.started()
    assert outcome(deployment.propose(paused, "PAUSED", state_details={"pause_key": "approve"})) == (
        "ACCEPT", "PAUSED", "Paused")
    waiting = deployment.run()
    assert outcome(deployment.propose(waiting, "PENDING"))[2] == "AwaitingConcurrencySlot"

    resumed = deployment.propose(paused, "RUNNING")

    assert resumed["status"] == "ACCEPT" and deployment.slots_in_use() == 1
    suspended = deployment.propose(paused, "PAUSED", name="Suspended",
                                   state_details={"pause_key": "sleep", "pause_reschedule": True})
    assert outcome(suspended) == ("ACCEPT", "PAUSED", "Suspended")
    assert deployment.slots_in_use() == 0
    assert deployment.propose(waiting, "PENDING")["status"] == "ACCEPT"


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("ENQUEUE", ("REJECT", "SCHEDULED", "AwaitingConcurrencySlot")), ("CANCEL_NEW", ("REJECT", "CANCELLED", "Cancelled"))],
)
def test_a_pending_run_without_a_slot_secures_one_before_running(
    worker: Worker, strategy: str, expected: tuple[str, str, str]
) -> None:
    deployment = Deployment(worker, strategy)
    holder = deployment.started()
    without_slot = deployment.run(state={"type": "PENDING"})  # created in PENDING: forced, no slot

    result = deployment.propose(without_slot, "RUNNING")

    assert outcome(result) == expected
    assert result["details"]["reason"] == "Deployment concurrency limit reached."
    assert deployment.slots_in_use() == 1
    assert deployment.propose(holder, "COMPLETED")["status"] == "ACCEPT"
    if strategy == "ENQUEUE":  # it waited in line, and is submitted once a slot is free
        assert deployment.propose(without_slot, "PENDING")["status"] == "ACCEPT"
        assert deployment.slots_in_use() == 1


def test_a_bounced_rerun_starts_fresh_so_its_pauses_fire_again(worker: Worker) -> None:
    deployment = Deployment(worker)
    run_id = deployment.started()
    assert deployment.propose(run_id, "PAUSED", state_details={"pause_key": "approve"})["status"] == "ACCEPT"
    assert deployment.propose(run_id, "RUNNING")["status"] == "ACCEPT"
    assert deployment.propose(run_id, "PAUSED", state_details={"pause_key": "approve"})["details"]["reason"] == (
        "This pause has already fired.")
    assert deployment.propose(run_id, "COMPLETED")["status"] == "ACCEPT"
    holder = deployment.started()

    bounced = deployment.propose(run_id, "RUNNING")  # a rerun, while the only slot is taken

    assert outcome(bounced) == ("REJECT", "SCHEDULED", "AwaitingConcurrencySlot")
    assert deployment.propose(holder, "COMPLETED")["status"] == "ACCEPT"
    # submitted now (not at the waiting line's scheduled time), then started
    assert deployment.propose(run_id, "PENDING", state_details={"scheduled_time": past()})["status"] == "ACCEPT"
    assert deployment.propose(run_id, "RUNNING")["status"] == "ACCEPT"
    fired_again = deployment.propose(run_id, "PAUSED", state_details={"pause_key": "approve"})
    assert outcome(fired_again) == ("ACCEPT", "PAUSED", "Paused")


def test_job_variables_change_only_on_a_scheduled_run_of_a_deployment(worker: Worker) -> None:
    deployment = Deployment(worker)
    scheduled = deployment.run(job_variables={"image": "a"})
    running = deployment.started(job_variables={"image": "a"})
    adhoc = str(worker.call("flow_runs.create_flow_run", flow_run={
        "flow_id": deployment.flow_id, "state": {"type": "SCHEDULED"}})["id"])

    assert worker.call("flow_runs.update_flow_run", flow_run_id=scheduled, flow_run={"job_variables": {"image": "b"}})
    assert worker.call("flow_runs.read_flow_run", flow_run_id=scheduled)["job_variables"] == {"image": "b"}
    for run_id, message in [
        (running, "flow_run.job_variables: Job variables for a flow run in state RUNNING cannot be updated"),
        (adhoc, "flow_run.job_variables: A deployment for the flow run could not be found"),
    ]:
        refused = worker.outcome("flow_runs.update_flow_run", flow_run_id=run_id,
                                 flow_run={"job_variables": {"image": "b"}, "name": "renamed"})
        meta = worker.raw_meta(refused.id)
        assert (meta["status"], meta["result"]["exc_type"], meta["result"]["exc_message"]) == (
            "FAILURE", "ValidationError", [message])
        read = worker.call("flow_runs.read_flow_run", flow_run_id=run_id)
        assert read["name"] != "renamed" and read["job_variables"] != {"image": "b"}
    assert worker.call("flow_runs.update_flow_run", flow_run_id=str(uuid.uuid4()),
                       flow_run={"job_variables": {"image": "b"}}) is False


def test_result_data_keeps_no_artifact_fields(worker: Worker) -> None:
    deployment = Deployment(worker)
    run_id = deployment.started()
    data = {"type": "reference", "storage_key": "results/1", "artifact_key": "report",
            "artifact_type": "result", "artifact_description": "the report"}

    result = deployment.propose(run_id, "COMPLETED", data=data)

    assert result["state"]["data"] == {"type": "reference", "storage_key": "results/1"}
    history = worker.call("flow_run_states.read_flow_run_states", flow_run_id=run_id)
    assert history[-1]["data"] == {"type": "reference", "storage_key": "results/1"}
