"""RabbitMQ as the broker: the same requests, the same exactly-once effects, and RabbitMQ's own
guards: quorum queues with a delivery limit, dead-letter queues that park a message that keeps
killing its worker, retry countdowns through native delayed delivery, publisher confirms.

Each test module gets a virtual host of its own on the local RabbitMQ (`tests.rabbitmq`); results
go to the test Redis as with the Redis broker.
"""

import contextlib
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kombu import Connection, Queue

from models.settings import Settings
from tasks.broker_topology import PUBLISH_CONNECT_OPTIONS, dead_letter_queue_name
from tasks.metrics import _queue_depth, monitored_queues
from tasks.worker_app import create_app
from tests.celery_support import Worker, new_id, running_worker
from tests.crashing_tasks import KILL_OWN_PROCESS
from tests.rabbitmq import (
    forwarded_port,
    free_port,
    list_exchanges,
    list_queues,
    rabbitmq_vhost,
    settled_ready_count,
)
from tests.test_bounded_work import assert_retried_until_the_lock_goes, states_of

pytestmark = [pytest.mark.integration, pytest.mark.postgres_only, pytest.mark.usefixtures("db")]


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    with rabbitmq_vhost() as url:
        yield url


@pytest.fixture(scope="module")
def amqp_worker(vhost: str, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with running_worker(database_url, tmp_path_factory.mktemp("amqp"), broker_url=vhost,
                        lock_timeout_seconds="0.3", task_max_retries="10") as handle:  # as test_bounded_work's
        yield handle


def test_a_run_is_orchestrated_over_rabbitmq_with_one_effect_per_request(amqp_worker: Worker) -> None:
    flow = amqp_worker.call("flows.create_flow", flow={"name": "over-amqp"})
    deployment = amqp_worker.call("deployments.create_deployment", deployment={
        "name": "limited", "flow_id": flow["id"], "concurrency_limit": 1,
        "concurrency_options": {"collision_strategy": "ENQUEUE"}})
    run = amqp_worker.call("flow_runs.create_flow_run", flow_run={
        "flow_id": flow["id"], "deployment_id": deployment["id"], "state": {"type": "SCHEDULED"}})

    outcomes = []
    for state in ("PENDING", "RUNNING", "COMPLETED"):
        task_id = new_id()
        kwargs = {"flow_run_id": run["id"], "state": {"type": state}}
        copies = [amqp_worker.send("flow_runs.set_flow_run_state", task_id, kwargs=kwargs) for _ in range(2)]
        outcomes.append([copy.get(timeout=30)["status"] for copy in copies])

    assert outcomes == [["ACCEPT", "ACCEPT"]] * 3
    assert states_of(amqp_worker, run["id"]) == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    assert amqp_worker.call("deployments.read_deployment", deployment_id=deployment["id"])["concurrency_limit"] == 1


def test_the_queues_are_quorum_queues_with_a_delivery_limit_and_a_dead_letter_queue(
    amqp_worker: Worker, vhost: str
) -> None:
    queues = list_queues(vhost)
    for name in (amqp_worker.queue, f"{amqp_worker.queue}.maintenance"):
        assert queues[name]["type"] == "quorum"
        arguments = queues[name]["arguments"]
        assert arguments["x-delivery-limit"] == Settings().broker_delivery_limit
        assert arguments["x-dead-letter-exchange"] == dead_letter_queue_name(name)
        assert queues[dead_letter_queue_name(name)]["type"] == "quorum"
    exchanges = list_exchanges(vhost)
    assert exchanges[amqp_worker.queue] == "topic"  # what native delayed delivery needs
    assert exchanges["celery_delayed_0"] == "topic"


def test_a_retry_waits_in_rabbitmq_not_in_the_worker_and_takes_effect_once(
    amqp_worker: Worker, database_url: str
) -> None:
    assert_retried_until_the_lock_goes(database_url, amqp_worker)
    assert "Direct exchanges are not supported with native delayed delivery" not in amqp_worker.log_text()


def test_publisher_confirms_are_on_for_the_worker_and_the_producer_client() -> None:
    app = create_app(Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    assert app.conf.broker_transport_options == {"confirm_publish": True, **PUBLISH_CONNECT_OPTIONS}
    with app.connection_for_write() as connection:
        assert connection.transport_options.get("confirm_publish") is True


def test_a_message_that_keeps_killing_its_worker_is_dead_lettered_and_the_worker_goes_on(
    database_url: str, tmp_path: Path
) -> None:
    """The worker runs tasks in its main process (solo pool), so the kill takes the whole worker
    down and RabbitMQ counts the lost delivery; past the limit the message is parked. One message
    reserved at a time (concurrency 1): no other message is lost with the worker."""
    with rabbitmq_vhost() as url:
        with running_worker(database_url, tmp_path, app="tests.crashing_tasks", broker_url=url, pool="solo",
                            concurrency=1, broker_delivery_limit="1") as handle:
            handle.send(KILL_OWN_PROCESS)
            dead_letters = dead_letter_queue_name(handle.queue)
            deaths = 0
            deadline = time.monotonic() + 90
            while list_queues(url)[dead_letters]["messages_ready"] == 0:
                assert time.monotonic() < deadline, handle.log_text()
                if handle.process.poll() is not None:
                    handle.restart()
                    deaths += 1
                time.sleep(0.5)
            # The second death can be parked before this loop sees the process gone.
            if deaths < 2:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    handle.process.wait(timeout=10)
            if handle.process.poll() is not None:
                handle.restart()
                deaths += 1

            assert deaths >= 2  # delivered, lost, delivered again, lost again: over the limit of 1
            assert handle.call("flow_runs.count_flow_runs") == 0  # the same deployment still answers
            assert settled_ready_count(url, handle.queue, expected=0) == 0
            app = create_app(Settings(broker_url=url, task_queue=handle.queue))
            assert dead_letters in monitored_queues(Settings(broker_url=url, task_queue=handle.queue))
            assert _queue_depth(app, dead_letters) == 1  # what `flowruns metrics` reports
            app.close()
            with Connection(url) as connection:
                parked = Queue(dead_letters, no_declare=True)(connection.default_channel).get()
                assert parked is not None and parked.headers["task"] == KILL_OWN_PROCESS
                parked.ack()


def test_the_producer_client_sends_over_rabbitmq_with_flowruns_own_app(amqp_worker: Worker, vhost: str) -> None:
    from models.schemas.actions import FlowCreate
    from tasks import producer
    from tests.celery_support import RESULT_BACKEND

    app = create_app(Settings(broker_url=vhost, result_backend=RESULT_BACKEND, task_queue=amqp_worker.queue))
    try:
        flow = producer.create_flow(app, FlowCreate(name="from-the-client"), queue=amqp_worker.queue)
        again = producer.create_flow(app, FlowCreate(name="from-the-client"), queue=amqp_worker.queue)
    finally:
        app.close()

    assert flow.name == "from-the-client" and again.id == flow.id


def test_a_publish_waits_out_a_broker_that_is_away_longer_than_kombus_connect_timeout(vhost: str) -> None:
    """A worker's follow-up or retry, and the producer client's request, is published while the
    node restarts: kombu's reconnect gives up after `broker_connection_timeout` (4 s) unless told
    otherwise, so a publish during a restart of a few seconds failed and a retry became a FAILURE.
    Here the broker's port opens 7 s after the publish began; the message arrives."""
    port, broker = free_port(), urlsplit(vhost)
    away = broker._replace(netloc=f"{broker.username}:{broker.password}@127.0.0.1:{port}").geturl()
    queue = f"publish-wait-{new_id()}"
    app = create_app(Settings(broker_url=away, task_queue=queue))
    outcome: dict[str, Any] = {}

    def publish() -> None:
        try:
            outcome["sent"] = app.send_task("flow_runs.count_flow_runs", kwargs={}).id
        except Exception as error:  # noqa: BLE001 - reported by the test
            outcome["error"] = error

    publisher = threading.Thread(target=publish)
    started = time.monotonic()
    publisher.start()
    time.sleep(7)
    with forwarded_port(port, (broker.hostname or "127.0.0.1", broker.port or 5672)):
        publisher.join(30)
        assert "error" not in outcome, f"gave up after {time.monotonic() - started:.1f} s: {outcome['error']!r}"
        assert "sent" in outcome
        assert settled_ready_count(vhost, queue, expected=1) == 1
    app.close()
