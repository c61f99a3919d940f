"""`flowruns metrics`: after a real batch through a worker, the Prometheus endpoint shows the slots
each deployment holds, the queue depth, transitions by outcome, inbox replays, runs marked late and
what the reconciler repaired."""

import datetime
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from models import orm
from models.database import get_engine
from tests.celery_support import BROKER_URL, REPOSITORY, RESULT_BACKEND, Worker, stop_process, worker  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def exporter(worker: Worker, database_url: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "FLOWRUNS_DATABASE_URL": database_url, "FLOWRUNS_BROKER_URL": BROKER_URL,
           "FLOWRUNS_RESULT_BACKEND": RESULT_BACKEND, "FLOWRUNS_TASK_QUEUE": worker.queue}
    process = subprocess.Popen([sys.executable, "-m", "tasks.cli", "metrics", "--port", str(port)],
                               cwd=REPOSITORY, env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            break
        except OSError:
            time.sleep(0.2)
    time.sleep(1.0)  # the event receiver is listening
    try:
        yield url
    finally:
        stop_process(process)


def sample(name: str, **labels: str) -> str:
    """A sample's name with its labels in a fixed order (the exposition's order is not fixed)."""
    return name + "".join(f" {key}={value}" for key, value in sorted(labels.items()))


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        sample(found.name, **found.labels): found.value
        for family in text_string_to_metric_families(text)
        for found in family.samples
    }


def wait_for(url: str, expected: dict[str, float]) -> dict[str, float]:
    deadline = time.monotonic() + 30
    while True:
        values = scrape(url)
        if all(values.get(name) == value for name, value in expected.items()) or time.monotonic() > deadline:
            return values
        time.sleep(0.5)


def test_a_real_batch_shows_in_the_metrics(worker: Worker, exporter: str, database_url: str) -> None:
    call = worker.call
    past = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)).isoformat()
    flow = call("flows.create_flow", flow={"name": "metrics"})
    deployment = call("deployments.create_deployment", deployment={
        "name": "limited", "flow_id": flow["id"], "concurrency_limit": 2,
        "concurrency_options": {"collision_strategy": "ENQUEUE"}})

    def run(**fields: Any) -> str:
        state = {"type": "SCHEDULED", "state_details": {"scheduled_time": past}}
        return str(call("flow_runs.create_flow_run", flow_run={"flow_id": flow["id"], "state": state, **fields})["id"])

    def propose(run_id: str, state_type: str, task_id: str | None = None) -> str:
        result: dict[str, Any] = worker.send("flow_runs.set_flow_run_state", task_id,
                                             kwargs={"flow_run_id": run_id, "state": {"type": state_type}}).get(timeout=30)
        return str(result["status"])

    first, second, third = (run(deployment_id=deployment["id"]) for _ in range(3))
    assert propose(first, "PENDING") == propose(second, "PENDING") == "ACCEPT"
    running = "6f0c5c4e-1f7a-4c55-9d4e-2b1f0e7d9a10"
    assert propose(first, "RUNNING", running) == "ACCEPT"
    assert propose(first, "RUNNING", running) == "ACCEPT"  # a replay: the same request again
    assert propose(third, "PENDING") == "REJECT"  # AwaitingConcurrencySlot
    assert propose(first, "PENDING") == "ABORT"
    run()  # an overdue scheduled run, for the late-runs marker
    assert call("maintenance.mark_late_runs") == 1
    with get_engine(database_url).begin() as connection:  # drift, for the reconciler to repair
        connection.execute(sa.update(orm.ConcurrencyLimit).values(active_slots=1))
    assert call("maintenance.reconcile_concurrency_slots")["limits_corrected"] == 1

    labels = {"deployment_id": deployment["id"], "deployment": "limited"}
    expected = {
        sample("flowruns_transitions_total", outcome="ACCEPT"): 3.0,
        sample("flowruns_transitions_total", outcome="REJECT"): 1.0,
        sample("flowruns_transitions_total", outcome="ABORT"): 1.0,
        sample("flowruns_requests_total", outcome="ACCEPT", task="flow_runs.set_flow_run_state"): 4.0,
        sample("flowruns_inbox_replays_total"): 1.0,
        sample("flowruns_runs_marked_late_total"): 1.0,
        sample("flowruns_reconciler_repairs_total", kind="limits_corrected"): 1.0,
        sample("flowruns_deployment_slots_held", **labels): 2.0,
        sample("flowruns_deployment_slots_limit", **labels): 2.0,
        sample("flowruns_queue_depth", queue=worker.queue): 0.0,
    }
    values = wait_for(exporter, expected)
    assert {name: values.get(name) for name in expected} == expected, sorted(values)
    assert not [name for name in values if name.startswith("flowruns_retries_total")]


def test_a_request_received_again_before_its_first_copy_finished_keeps_its_name() -> None:
    """A replay's task-received event can come before the first copy's task-succeeded event."""
    from prometheus_client import CollectorRegistry

    from tasks.metrics import EventCounters, InFlight

    registry = CollectorRegistry()
    counters, names, replayed = EventCounters(registry), InFlight(), set[str]()
    task, result = "flow_runs.set_flow_run_state", "{'status': 'ACCEPT', 'details': {}}"
    for event in ({"type": "task-received", "uuid": "r", "name": task},
                  {"type": "task-received", "uuid": "r", "name": task},
                  {"type": "task-succeeded", "uuid": "r", "result": result},
                  {"type": "flowruns-replay", "task_id": "r"},
                  {"type": "task-succeeded", "uuid": "r", "result": result}):
        counters.handle(event, names, replayed)
    assert registry.get_sample_value("flowruns_requests_total", {"task": task, "outcome": "ACCEPT"}) == 2.0
    assert registry.get_sample_value("flowruns_requests_total", {"task": "unknown", "outcome": "SUCCESS"}) is None
    assert registry.get_sample_value("flowruns_transitions_total", {"outcome": "ACCEPT"}) == 1.0
    assert len(names) == 0


def test_in_flight_forgets_the_oldest_ids_beyond_what_it_keeps() -> None:
    from tasks.metrics import InFlight

    names = InFlight()
    for number in range(5):
        names.received(str(number), f"task-{number}")
    names.forget_oldest(2)
    assert len(names) == 2
    assert (names.finished("0"), names.finished("4")) == ("", "task-4")
