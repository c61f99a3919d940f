"""Bounded work: no request holds a worker process for long.

A request blocked by a lock another connection really holds fails its attempt at the lock
timeout (or its soft time limit) and is retried with backoff under the same task id, so it takes
effect exactly once when the lock goes; a task past its hard time limit loses its process, and its
message is delivered again, then parked.
"""

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from models.database import get_engine
from tests.celery_support import Worker, running_worker
from tests.crashing_tasks import OVERRUN_HARD_LIMIT

pytestmark = [pytest.mark.integration, pytest.mark.postgres_only, pytest.mark.usefixtures("db")]


@contextmanager
def row_locked_elsewhere(database_url: str, run_id: str, seconds: float) -> Iterator[None]:
    """Another connection holds the run's row lock for `seconds` (from a thread), then lets go."""
    locked = threading.Event()

    def hold() -> None:
        with get_engine(database_url).connect() as connection:
            connection.execute(sa.text("SELECT id FROM flow_run WHERE id = :id FOR UPDATE"), {"id": run_id})
            locked.set()
            time.sleep(seconds)
            connection.rollback()

    holder = threading.Thread(target=hold)
    holder.start()
    assert locked.wait(10)
    try:
        yield
    finally:
        holder.join()


def scheduled_run(worker: Worker) -> str:
    flow = worker.call("flows.create_flow", flow={"name": "bounded"})
    return str(worker.call("flow_runs.create_flow_run", flow_run={"flow_id": flow["id"], "state": {"type": "SCHEDULED"}})["id"])


def states_of(worker: Worker, run_id: str) -> list[str]:
    return [state["type"] for state in worker.call("flow_run_states.read_flow_run_states", flow_run_id=run_id)]


@pytest.fixture
def impatient_worker(database_url: str, tmp_path: Path) -> Iterator[Worker]:
    """Gives up on a lock after 0.3 s; its 11 attempts wait on the lock at least 3.3 s in all,
    whatever their jittered countdowns, so a lock held 2 s cannot outlast them."""
    with running_worker(database_url, tmp_path, lock_timeout_seconds="0.3", task_max_retries="10") as handle:
        yield handle


@pytest.fixture
def short_lived_worker(database_url: str, tmp_path: Path) -> Iterator[Worker]:
    with running_worker(database_url, tmp_path, app="tests.crashing_tasks", lock_timeout_seconds="30",
                        task_soft_time_limit_seconds="1", task_time_limit_seconds="3") as handle:
        yield handle


def assert_retried_until_the_lock_goes(database_url: str, worker: Worker) -> None:
    """A transition sent while another connection holds its run's row lock waits, attempt after
    attempt (a short lock timeout), and takes effect once when the lock goes."""
    run_id = scheduled_run(worker)
    with row_locked_elsewhere(database_url, run_id, seconds=2.0):
        result = worker.send("flow_runs.set_flow_run_state",
                             kwargs={"flow_run_id": run_id, "state": {"type": "PENDING"}, "force": True})
        time.sleep(1.0)
        assert not result.ready()  # still waiting on the lock, attempt after attempt
    outcome = result.get(timeout=30)

    assert outcome["status"] == "ACCEPT"
    assert worker.raw_meta(result.id)["retries"] >= 1
    assert "LockNotAvailable" in worker.log_text() or "lock timeout" in worker.log_text()
    assert states_of(worker, run_id) == ["SCHEDULED", "PENDING"]


def test_a_request_blocked_by_a_lock_is_retried_until_the_lock_goes(database_url: str, impatient_worker: Worker) -> None:
    assert_retried_until_the_lock_goes(database_url, impatient_worker)


def test_a_request_over_its_soft_time_limit_ends_and_is_delivered_again(
    database_url: str, short_lived_worker: Worker
) -> None:
    run_id = scheduled_run(short_lived_worker)
    with row_locked_elsewhere(database_url, run_id, seconds=2.5):
        result = short_lived_worker.send("flow_runs.set_flow_run_state",
                                         kwargs={"flow_run_id": run_id, "state": {"type": "PENDING"}, "force": True})
        outcome = result.get(timeout=30)

    assert outcome["status"] == "ACCEPT"
    assert short_lived_worker.raw_meta(result.id)["retries"] >= 1
    assert f"Soft time limit (1.0s) exceeded for flow_runs.set_flow_run_state[{result.id}]" in short_lived_worker.log_text()
    assert states_of(short_lived_worker, run_id) == ["SCHEDULED", "PENDING"]


def test_a_task_past_its_hard_time_limit_is_delivered_again_then_parked(short_lived_worker: Worker) -> None:
    main_pid = short_lived_worker.process.pid
    result = short_lived_worker.send(OVERRUN_HARD_LIMIT, kwargs={"seconds": 10})
    result.get(timeout=60, propagate=False)

    meta = short_lived_worker.raw_meta(result.id)
    assert meta["status"] == "FAILURE" and meta["result"]["exc_type"] == "PoisonMessageError"
    assert "TimeLimitExceeded" in meta["result"]["exc_message"][0]
    log = short_lived_worker.log_text()
    assert log.count(f"{OVERRUN_HARD_LIMIT}[{result.id}] received") == 3
    assert log.count(f"Hard time limit (3.0s) exceeded for {OVERRUN_HARD_LIMIT}[{result.id}]") == 3
    assert short_lived_worker.process.pid == main_pid and short_lived_worker.process.poll() is None
    assert isinstance(short_lived_worker.call("flow_runs.count_flow_runs"), int)
