"""At-least-once delivery, exactly-once effect: the same task id delivered again changes nothing."""

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

from models import orm, requests
from models.database import get_engine, unit_of_work
from models.flow_run_inserts import read_parents
from models.errors import ValidationError
from orchestration import service
from tasks import deployments, flow_run_states, flow_runs, flows, task_runs
from tests.celery_support import Worker, apply, follow_ups, new_id, offline_app, ok, row_counts, worker  # noqa: F401

pytestmark = pytest.mark.usefixtures("db", "follow_ups")


@pytest.fixture
def flow_id() -> str:
    return str(ok(flows.create_flow, flow={"name": "etl"})["id"])


def create_run(flow_id: str, **fields: Any) -> dict[str, Any]:
    return ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, **fields})


def propose(run_id: str, state_type: str, task_id: str | None = None, **state: Any) -> dict[str, Any]:
    return ok(flow_runs.set_flow_run_state, task_id, flow_run_id=run_id, state={"type": state_type, **state})


def history(run_id: str) -> list[str]:
    return [s["name"] for s in ok(flow_run_states.read_flow_run_states, flow_run_id=run_id)]


def limited_deployment(flow_id: str, strategy: str = "ENQUEUE") -> str:
    deployment = ok(
        deployments.create_deployment,
        deployment={
            "name": f"limited-{strategy}", "flow_id": flow_id, "concurrency_limit": 1,
            "concurrency_options": {"collision_strategy": strategy},
        },
    )
    return str(deployment["id"])


def two_copies_at_once(task: Any, task_id: str, **kwargs: Any) -> list[Any]:
    """The eager results of two copies of one request, started together on two threads."""
    barrier = threading.Barrier(2)
    outcomes: list[Any] = []

    def deliver() -> None:
        barrier.wait()
        outcomes.append(apply(task, task_id, **kwargs))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def active_slots(deployment_id: str) -> int:
    deployment = ok(deployments.read_deployment, deployment_id=deployment_id)
    return int(deployment["global_concurrency_limit"]["active_slots"])


# ------------------------------------------------------------------------------- transitions


def test_redelivered_transition_writes_one_state(flow_id: str) -> None:
    run = create_run(flow_id)
    task_id = new_id()
    first = propose(run["id"], "RUNNING", task_id)
    second = propose(run["id"], "RUNNING", task_id)
    assert second == first
    assert history(run["id"]) == ["Pending", "Running"]


def test_transition_replayed_after_the_run_moved_on_returns_the_recorded_outcome(flow_id: str) -> None:
    run = create_run(flow_id)
    running_id = new_id()
    running = propose(run["id"], "RUNNING", running_id)
    propose(run["id"], "COMPLETED")
    assert propose(run["id"], "RUNNING", running_id) == running
    assert history(run["id"]) == ["Pending", "Running", "Completed"]
    assert ok(flow_runs.read_flow_run, flow_run_id=run["id"])["state_type"] == "COMPLETED"


def test_redelivered_failure_rejected_into_awaiting_retry_writes_one_state(flow_id: str) -> None:
    run = create_run(flow_id, empirical_policy={"retries": 1, "retry_delay": 0})
    propose(run["id"], "RUNNING")
    failed_id = new_id()
    first = propose(run["id"], "FAILED", failed_id)
    assert first["status"] == "REJECT" and first["state"]["name"] == "AwaitingRetry"
    # The replacement does not carry the request's transition id: only the inbox can tell.
    assert first["state"]["state_details"]["transition_id"] != failed_id
    assert propose(run["id"], "FAILED", failed_id) == first
    assert history(run["id"]) == ["Pending", "Running", "AwaitingRetry"]


def test_redelivered_proposal_rejected_into_awaiting_concurrency_slot_writes_one_state(flow_id: str) -> None:
    deployment_id = limited_deployment(flow_id)
    holder = create_run(flow_id, deployment_id=deployment_id, state={"type": "SCHEDULED"})
    waiter = create_run(flow_id, deployment_id=deployment_id, state={"type": "SCHEDULED"})
    assert propose(holder["id"], "PENDING")["status"] == "ACCEPT"
    pending_id = new_id()
    first = propose(waiter["id"], "PENDING", pending_id)
    assert first["status"] == "REJECT" and first["state"]["name"] == "AwaitingConcurrencySlot"
    propose(holder["id"], "RUNNING")
    propose(holder["id"], "COMPLETED")  # the slot is free now: a second orchestration would take it
    assert propose(waiter["id"], "PENDING", pending_id) == first
    assert history(waiter["id"]) == ["Scheduled", "AwaitingConcurrencySlot"]
    assert active_slots(deployment_id) == 0


def test_redelivered_proposal_rejected_into_cancelled_writes_one_state(flow_id: str) -> None:
    deployment_id = limited_deployment(flow_id, "CANCEL_NEW")
    holder = create_run(flow_id, deployment_id=deployment_id, state={"type": "SCHEDULED"})
    newcomer = create_run(flow_id, deployment_id=deployment_id, state={"type": "SCHEDULED"})
    propose(holder["id"], "PENDING")
    pending_id = new_id()
    first = propose(newcomer["id"], "PENDING", pending_id)
    assert first["status"] == "REJECT" and first["state"]["type"] == "CANCELLED"
    assert propose(newcomer["id"], "PENDING", pending_id) == first
    assert history(newcomer["id"]) == ["Scheduled", "Cancelled"]
    assert active_slots(deployment_id) == 1


# ------------------------------------------------------------------------------------ creates


def test_create_with_idempotency_key_redelivered_returns_the_same_run(flow_id: str) -> None:
    task_id = new_id()
    body = {"flow_id": flow_id, "idempotency_key": "nightly-2026-01-01"}
    first = ok(flow_runs.create_flow_run, task_id, flow_run=body)
    assert ok(flow_runs.create_flow_run, task_id, flow_run=body) == first
    # A new request (new task id) with the same key also gets the same run, now read again.
    assert ok(flow_runs.create_flow_run, flow_run=body)["id"] == first["id"]
    assert row_counts()["flow_run"] == 1
    assert history(first["id"]) == ["Pending"]


def test_create_without_idempotency_key_redelivered_creates_one_run(flow_id: str) -> None:
    task_id = new_id()
    first = ok(flow_runs.create_flow_run, task_id, flow_run={"flow_id": flow_id})
    assert ok(flow_runs.create_flow_run, task_id, flow_run={"flow_id": flow_id}) == first
    assert row_counts()["flow_run"] == 1


def test_a_create_copy_that_read_before_the_winner_recorded_returns_the_winners_outcome(
    flow_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A create without a key reads its parents and the inbox, then writes the run, its state and
    the inbox row in one statement. A copy whose read came before the winner's write finds the
    inbox row taken at its write: nothing of its run stays, and its next read finds the record."""
    task_id = new_id()
    winner = ok(flow_runs.create_flow_run, task_id, flow_run={"flow_id": flow_id, "tags": ["a"]})
    real_read = service.read_parents_and_inbox
    reads: list[bool] = []

    def read(session: Session, *args: Any) -> Any:
        parents, recorded = real_read(session, *args)
        reads.append(recorded is not None)
        if len(reads) == 1:  # as a copy that read before the winner wrote would see it
            return read_parents(session, args[0]), None
        return parents, recorded

    monkeypatch.setattr(service, "read_parents_and_inbox", read)
    assert ok(flow_runs.create_flow_run, task_id, flow_run={"flow_id": flow_id, "tags": ["a"]}) == winner
    assert reads == [True, True]
    counts = row_counts()
    assert (counts["flow_run"], counts["flow_run_state"], counts["processed_request"]) == (1, 1, 2)


def test_a_create_answers_with_the_run_as_it_was_stored(flow_id: str) -> None:
    """The response is built before the write (it goes into the inbox row with it): it is the run
    a read finds, field for field, but for the clocks a read computes at its own moment."""
    deployment_id = limited_deployment(flow_id)
    for fields in ({}, {"state": {"type": "SCHEDULED"}, "tags": ["x"], "parameters": {"n": 1}},
                   {"deployment_id": deployment_id, "labels": {"team": "data"}, "name": "named"},
                   {"state": {"type": "RUNNING"}, "empirical_policy": {"retries": 2, "retry_delay": 5}}):
        created = create_run(flow_id, **fields)
        read = ok(flow_runs.read_flow_run, flow_run_id=created["id"])
        clocks = ("estimated_run_time", "estimated_start_time_delta")
        assert {k: v for k, v in created.items() if k not in clocks} == {k: v for k, v in read.items() if k not in clocks}
    assert active_slots(deployment_id) == 0  # a forced first state takes no slot


def test_a_create_of_a_missing_flow_or_deployment_writes_nothing(flow_id: str) -> None:
    before = row_counts()
    missing = str(uuid.uuid4())
    for fields, field in (({"flow_id": missing}, "flow_id"), ({"flow_id": flow_id, "deployment_id": missing},
                                                              "deployment_id")):
        result = apply(flow_runs.create_flow_run, flow_run=fields)
        assert result.state == "FAILURE"
        assert type(result.result).__name__ == "ObjectNotFoundError"
        assert str(result.result).startswith(f"{field}: ")
    assert row_counts() == before


def test_a_create_task_id_used_by_another_task_is_refused(flow_id: str) -> None:
    task_id = new_id()
    ok(flows.create_flow, task_id, flow={"name": "other"})
    result = apply(flow_runs.create_flow_run, task_id, flow_run={"flow_id": flow_id})
    assert result.state == "FAILURE"
    assert isinstance(result.result, ValidationError)
    assert row_counts()["flow_run"] == 0


@pytest.mark.postgres_only
def test_a_create_as_the_worker_makes_it_is_two_statements_each_its_own_commit(flow_id: str) -> None:
    """The parents' read with the inbox look-up, then one statement writing the run, its first
    state and the inbox row: no BEGIN, no COMMIT (each statement commits on its own)."""
    from sqlalchemy import event

    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement.split(None, 1)[0].upper())

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", record)
    try:
        created = create_run(flow_id, state={"type": "SCHEDULED"})
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert seen == ["SELECT", "WITH"]
    assert history(created["id"]) == ["Scheduled"]


@pytest.mark.postgres_only
def test_concurrent_copies_of_one_create_write_one_run(flow_id: str) -> None:
    """Two copies of the same create at the same time: one run and one state, both answers the winner's."""
    for _ in range(5):
        task_id = new_id()
        outcomes = two_copies_at_once(flow_runs.create_flow_run, task_id, flow_run={"flow_id": flow_id})
        assert [o.state for o in outcomes] == ["SUCCESS", "SUCCESS"]
        assert outcomes[0].result == outcomes[1].result
        assert history(outcomes[0].result["id"]) == ["Pending"]
    counts = row_counts()
    assert (counts["flow_run"], counts["flow_run_state"]) == (5, 5)


# ------------------------------------------------------------------------------------ cleanup


def test_cleanup_any_number_of_times_releases_once(flow_id: str) -> None:
    deployment_id = limited_deployment(flow_id)
    first_run = create_run(flow_id, deployment_id=deployment_id, state={"type": "SCHEDULED"})
    second_run = create_run(flow_id, deployment_id=deployment_id, state={"type": "SCHEDULED"})
    propose(first_run["id"], "PENDING")
    assert active_slots(deployment_id) == 1
    cleanup_id = new_id()
    cleanup = flow_runs.cleanup_flow_run_concurrency_slots
    assert ok(cleanup, cleanup_id, flow_run_id=first_run["id"]) is None
    assert active_slots(deployment_id) == 0
    assert propose(second_run["id"], "PENDING")["status"] == "ACCEPT"  # takes the freed slot
    for task_id in (cleanup_id, cleanup_id, new_id(), new_id()):
        assert ok(cleanup, task_id, flow_run_id=first_run["id"]) is None
    assert active_slots(deployment_id) == 1  # the second run's slot was not released


def test_redelivered_delete_returns_true_again_and_deletes_nothing_more(flow_id: str) -> None:
    run = create_run(flow_id)
    task_id = new_id()
    assert ok(flow_runs.delete_flow_run, task_id, flow_run_id=run["id"]) is True
    assert ok(flow_runs.delete_flow_run, task_id, flow_run_id=run["id"]) is True
    assert ok(flow_runs.delete_flow_run, flow_run_id=run["id"]) is False


# -------------------------------------------------------------------------------- the inbox


def test_a_task_id_is_not_reused_across_task_names(flow_id: str) -> None:
    run = create_run(flow_id)
    task_id = new_id()
    propose(run["id"], "RUNNING", task_id)
    result = apply(flow_runs.update_flow_run, task_id, flow_run_id=run["id"], flow_run={"name": "x"})
    assert result.state == "FAILURE" and isinstance(result.result, ValidationError)
    assert "task_id" in str(result.result)


def test_failed_requests_are_not_recorded(session: Session) -> None:
    task_id = new_id()
    assert apply(flow_runs.set_flow_run_state, task_id, flow_run_id=new_id(), state={"type": "RUNNING"}).failed()
    assert session.get(orm.ProcessedRequest, task_id) is None


def test_read_tasks_are_not_recorded(flow_id: str) -> None:
    run = create_run(flow_id)
    before = row_counts()
    ok(flow_runs.read_flow_run, flow_run_id=run["id"])
    ok(flow_runs.count_flow_runs)
    ok(flow_run_states.read_flow_run_states, flow_run_id=run["id"])
    assert row_counts() == before


BlindLookup = Callable[[], list[str]]


@pytest.fixture
def blind_next_lookup(monkeypatch: pytest.MonkeyPatch) -> BlindLookup:
    """Once called, the next inbox look-up sees nothing (as a copy running at the same time as the
    first copy would), later ones see the truth; the call returns the task ids looked up."""

    def arm() -> list[str]:
        real_lookup = requests.replayed_outcome
        calls: list[str] = []

        def lookup(session: Session, task_id: str, name: str) -> Any:
            calls.append(task_id)
            return None if len(calls) == 1 else real_lookup(session, task_id, name)

        monkeypatch.setattr(requests, "replayed_outcome", lookup)
        return calls

    return arm


def test_a_copy_that_loses_the_race_at_commit_returns_the_winners_outcome(
    flow_id: str, blind_next_lookup: BlindLookup
) -> None:
    """A copy that did not see the winner's record (they ran at once) does its work, cannot record
    it at the end, rolls back and runs again, and then finds the record."""
    run = create_run(flow_id)
    task_id = new_id()
    winner = ok(flow_runs.update_flow_run, task_id, flow_run_id=run["id"], flow_run={"name": "renamed"})
    calls = blind_next_lookup()
    assert ok(flow_runs.update_flow_run, task_id, flow_run_id=run["id"], flow_run={"name": "renamed"}) == winner
    assert len(calls) == 2


def test_a_copy_that_fails_where_the_winner_succeeded_returns_the_winners_outcome(
    flow_id: str, blind_next_lookup: BlindLookup
) -> None:
    """The copy got past the look-up while the winner ran; the run was deleted before the copy
    wrote: not found, but the winner's record is the answer."""
    run = create_run(flow_id)
    task_id = new_id()
    body = {"flow_run_id": run["id"], "task_key": "t", "dynamic_key": "0"}
    winner = ok(task_runs.create_task_run, task_id, task_run=body)
    assert ok(flow_runs.delete_flow_run, flow_run_id=run["id"]) is True
    calls = blind_next_lookup()
    assert ok(task_runs.create_task_run, task_id, task_run=body) == winner
    assert len(calls) == 2


StaleRead = Callable[[str], list[str]]


@pytest.fixture
def stale_next_read(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], StaleRead]:
    """`capture(run_id)` reads the run as it is now (no inbox record yet) and returns `arm`; once
    armed, the next transition read answers with that captured read, as a copy that read before the
    winner wrote would see it. Later reads see the truth; `arm()` returns the task ids read for."""

    def capture(run_id: str) -> StaleRead:
        real_read = service.read_flow_run_snapshot
        with unit_of_work() as session:
            stale = real_read(session, uuid.UUID(run_id), None, None)

        def arm(_: str = "") -> list[str]:
            calls: list[str] = []

            def read(session: Session, flow_run_id: uuid.UUID, transition_id: Any, task_id: str | None) -> Any:
                calls.append(str(task_id))
                return stale if len(calls) == 1 else real_read(session, flow_run_id, transition_id, task_id)

            monkeypatch.setattr(service, "read_flow_run_snapshot", read)
            return calls

        return arm

    return capture


def test_a_transition_copy_that_read_before_the_winner_wrote_returns_the_winners_outcome(
    flow_id: str, stale_next_read: Callable[[str], StaleRead]
) -> None:
    """The copy decided on the run as it was before the winner's write: its own write finds the run
    moved on (and the request recorded), so it reads again and answers with the winner's outcome."""
    run = create_run(flow_id)
    task_id = new_id()
    arm = stale_next_read(run["id"])
    winner = propose(run["id"], "RUNNING", task_id)
    calls = arm()
    assert propose(run["id"], "RUNNING", task_id) == winner
    assert calls == [task_id, task_id]
    assert history(run["id"]) == ["Pending", "Running"]


def test_a_transition_copy_whose_run_was_deleted_returns_the_winners_outcome(
    flow_id: str, stale_next_read: Callable[[str], StaleRead]
) -> None:
    """The copy read the run before the winner wrote; the run was deleted before the copy wrote:
    its write applies to nothing, and its second read finds the winner's record, not the run."""
    run = create_run(flow_id)
    task_id = new_id()
    arm = stale_next_read(run["id"])
    winner = propose(run["id"], "RUNNING", task_id)
    assert ok(flow_runs.delete_flow_run, flow_run_id=run["id"]) is True
    calls = arm()
    assert propose(run["id"], "RUNNING", task_id) == winner
    assert calls == [task_id, task_id]


def test_inbox_functions(session: Session) -> None:
    assert requests.find_outcome(session, "t1") is None
    assert requests.replayed_outcome(session, "t1", "flows.create_flow") is None
    assert requests.record_outcome(session, "t1", "flows.create_flow", {"id": 1}) is True
    assert requests.record_outcome(session, "t2", "flow_runs.cleanup_flow_run_concurrency_slots", None) is True
    session.commit()
    assert requests.find_outcome(session, "t1") == requests.Recorded("flows.create_flow", {"id": 1})
    assert requests.replayed_outcome(session, "t2", "flow_runs.cleanup_flow_run_concurrency_slots") == (
        requests.Recorded("flow_runs.cleanup_flow_run_concurrency_slots", None)
    )
    with pytest.raises(ValidationError, match="task_id"):
        requests.replayed_outcome(session, "t1", "flows.other")
    assert requests.record_outcome(session, "t1", "flows.create_flow", {"id": 2}) is False
    session.rollback()
    assert requests.find_outcome(session, "t1") == requests.Recorded("flows.create_flow", {"id": 1})
    from models.types import now_utc

    assert requests.prune(session, now_utc()) == 2
    session.commit()


@pytest.mark.postgres_only
def test_concurrent_copies_of_one_transition_write_one_state(flow_id: str) -> None:
    """Two copies of the same task id at the same time: one state, both answers the winner's."""
    for _ in range(5):
        run = create_run(flow_id)
        task_id = new_id()
        outcomes = two_copies_at_once(flow_runs.set_flow_run_state, task_id, flow_run_id=run["id"],
                                      state={"type": "RUNNING"})
        assert [o.state for o in outcomes] == ["SUCCESS", "SUCCESS"]
        assert outcomes[0].result == outcomes[1].result
        assert history(run["id"]) == ["Pending", "Running"]


# ------------------------------------------------------------------------- through a worker


@pytest.mark.integration
def test_worker_redelivery_of_the_same_task_id_writes_one_state(worker: Worker, flow_id: str) -> None:
    run = worker.call("flow_runs.create_flow_run", flow_run={"flow_id": flow_id})
    task_id = new_id()
    kwargs = {"flow_run_id": run["id"], "state": {"type": "RUNNING"}}
    first = worker.call("flow_runs.set_flow_run_state", task_id, **kwargs)
    worker.producer.AsyncResult(task_id).forget()  # so the second wait sees the second copy's result
    second = worker.call("flow_runs.set_flow_run_state", task_id, **kwargs)
    assert second == first
    states = worker.call("flow_run_states.read_flow_run_states", flow_run_id=run["id"])
    assert [s["type"] for s in states] == ["PENDING", "RUNNING"]


@pytest.mark.integration
def test_worker_running_two_copies_at_once_writes_one_state(worker: Worker, flow_id: str) -> None:
    run = worker.call("flow_runs.create_flow_run", flow_run={"flow_id": flow_id})
    task_id = new_id()
    kwargs = {"flow_run_id": run["id"], "state": {"type": "RUNNING"}}
    copies = [worker.send("flow_runs.set_flow_run_state", task_id, kwargs=kwargs) for _ in range(2)]
    for copy in copies:
        copy.get(timeout=30)
    states = worker.call("flow_run_states.read_flow_run_states", flow_run_id=run["id"])
    assert [s["type"] for s in states] == ["PENDING", "RUNNING"]
    with unit_of_work() as session:
        assert session.get(orm.ProcessedRequest, task_id) is not None


@pytest.mark.integration
def test_worker_replays_a_create_with_idempotency_key(worker: Worker, flow_id: str) -> None:
    body = {"flow_id": flow_id, "idempotency_key": str(uuid.uuid4())}
    task_id = new_id()
    first = worker.call("flow_runs.create_flow_run", task_id, flow_run=body)
    worker.producer.AsyncResult(task_id).forget()
    assert worker.call("flow_runs.create_flow_run", task_id, flow_run=body) == first
    assert worker.call("flow_runs.count_flow_runs") == 1
