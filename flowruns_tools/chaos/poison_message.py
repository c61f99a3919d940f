"""The poison-message scenario: requests that take their worker down every time they run, mixed into
a normal batch.

Two kinds (`flowruns_tools.chaos.poison_app`): one kills the pool process that runs it, which
flowruns counts against the message and parks after `FLOWRUNS_MAX_WORKER_LOSSES` (FAILURE
`PoisonMessageError`, on any broker); on RabbitMQ, one kills the worker's main process, which only
the broker can count: past the queue's delivery limit RabbitMQ dead-letters it. (On Redis nothing
counts a lost main process: such a message would come back after every visibility timeout, so it
is not sent there.) Afterwards every ordinary request has taken effect exactly once, every poison
message is parked where it should be, and the worker answers.
"""

import json
import random
import uuid
from collections.abc import Callable

from kombu import Connection, Queue

from flowruns_tools.chaos.checks import ScenarioResult
from flowruns_tools.chaos.poison_app import KILL_POOL_PROCESS, KILL_WORKER
from flowruns_tools.chaos.producer import publish_raw
from flowruns_tools.chaos.scenarios import Options, World, _lifecycles, run_batch, world
from flowruns_tools.chaos.services import RESULT_PREFIX
from tasks.broker_topology import dead_letter_queue_name

DELIVERY_LIMIT = 2
"""The scenario's RabbitMQ delivery limit: a main-process killer is parked after three deliveries."""


def poison_message(options: Options) -> ScenarioResult:
    result = ScenarioResult("poison-message")
    rng = random.Random(options.seed + 6)
    with world(options, "poison-message", worker_app="flowruns_tools.chaos.poison_app",
               worker_settings={"max_worker_losses": 3, "broker_delivery_limit": DELIVERY_LIMIT}) as scenario:
        scenario.start_worker()
        workload = _lifecycles(options, scenario, rng)
        pool_killers = [str(uuid.uuid4()) for _ in range(2)]
        worker_killers = [str(uuid.uuid4())] if scenario.on_rabbitmq else []

        def send(name: str, task_id: str) -> Callable[[], str]:
            def action() -> str:
                publish_raw(scenario.driver.app, name, "{}", task_id, scenario.queue)
                return f"sent {name}[{task_id}]"
            return action

        steps = [(0.1, send(KILL_POOL_PROCESS, pool_killers[0])), (0.5, send(KILL_POOL_PROCESS, pool_killers[1]))]
        steps += [(0.3, send(KILL_WORKER, task_id)) for task_id in worker_killers]
        run_batch(scenario, workload, sorted(steps, key=lambda step: step[0]), result,
                  options.size.deadline_seconds, keep_worker=True)
        _check_parked(result, scenario, pool_killers, worker_killers)
        if scenario.driver.call("flow_runs.count_flow_runs", {}) is None:
            result.error("the worker did not answer after the poison messages")
        scenario.worker.stop()
        result.notes["worker_restarts"] = len(scenario.supervisor_events)
        result.crashes = []  # the main-process killer takes the worker down on purpose
    return result


def _check_parked(result: ScenarioResult, scenario: World, pool_killers: list[str], worker_killers: list[str]) -> None:
    """Each pool-process killer is parked by flowruns (FAILURE PoisonMessageError), or by RabbitMQ
    when the worker killer took its deliveries past the limit meanwhile; each worker killer is in
    the dead-letter queue."""
    parked = _dead_lettered_task_ids(scenario) if scenario.on_rabbitmq else []
    for task_id in pool_killers:
        raw = scenario.driver.results.get(f"{RESULT_PREFIX}{task_id}")
        meta = json.loads(raw) if raw else {}
        exc_type = (meta.get("result") or {}).get("exc_type")
        if task_id not in parked and (meta.get("status") != "FAILURE" or exc_type != "PoisonMessageError"):
            result.error(f"pool-process killer {task_id}: {meta.get('status')} {exc_type}, not parked")
    if missing := [task_id for task_id in worker_killers if task_id not in parked]:
        result.error(f"main-process killers not dead-lettered: {missing}")
    # A request that was running beside the worker killer lost its delivery with the worker each
    # time too, so it may be over the limit as well: the producer's re-send under the same task id
    # applied it (the lifecycle checks say whether every ordinary request took effect once).
    innocent = [task_id for task_id in parked if task_id not in pool_killers + worker_killers]
    requests = scenario.driver.requests
    if unanswered := [task_id for task_id in innocent if task_id not in requests or not requests[task_id].succeeded]:
        result.error(f"dead-lettered requests that never took effect: {unanswered}")
    result.notes["dead_lettered_by_rabbitmq"] = len(parked)
    result.notes["dead_lettered_beside_the_killer"] = len(innocent)


def _dead_lettered_task_ids(scenario: World) -> list[str]:
    """The task ids RabbitMQ parked in the queue's dead-letter queue (read and acknowledged)."""
    task_ids = []
    with Connection(scenario.broker_url) as connection:
        queue = Queue(dead_letter_queue_name(scenario.queue), no_declare=True)(connection.default_channel)
        while (message := queue.get()) is not None:
            task_ids.append(str(message.headers.get("id")))
            message.ack()
    return task_ids
