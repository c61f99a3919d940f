"""What each broker needs: the queues flowruns declares and the transport options, per broker kind.

Redis: plain queues (lists); the visibility timeout decides when an unacknowledged message of a
dead worker comes back, so it is set in every place kombu reads it, and the sweep for such
messages runs often enough to honour it.

RabbitMQ: durable quorum queues (replicated, and they count deliveries), each on a topic
exchange of its own so that retry countdowns use RabbitMQ's native delayed delivery instead of
being held unacknowledged in a worker's memory. A message delivered more than
`FLOWRUNS_BROKER_DELIVERY_LIMIT` times (its worker died under it again and again) is
dead-lettered into `<queue>.dead-letter`, where it stays, visible, until an operator looks at it.
Publisher confirms are on: a publish returns once the broker has the message.
"""

import math
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from celery import Celery, bootsteps
from kombu import Exchange, Queue

from models.settings import Settings

REDIS_SCHEMES = {"redis", "rediss", "redis+socket", "sentinel"}
AMQP_SCHEMES = {"amqp", "amqps", "pyamqp"}

PUBLISH_INTERVALS = {"interval_start": 0.1, "interval_step": 0.5, "interval_max": 2.0}
"""The pauses between a publisher's attempts while the broker is away: 0.1 s, growing by 0.5 s, at most 2 s."""
PUBLISH_RETRY_POLICY = {"max_retries": 12, **PUBLISH_INTERVALS}
"""How a worker retries publishing a message (a follow-up, a task's retry) while the broker is away
(about 20 s in all)."""
PUBLISH_CONNECT_OPTIONS = {"connect_retries_timeout": 20.0, **PUBLISH_INTERVALS}
"""How long, and how often, a publisher reconnects to RabbitMQ before its message is tried again:
kombu does it with these transport options, and otherwise gives up after `broker_connection_timeout`
(4 s), well inside a node restart and before the publish retry policy gets its turn."""


def broker_kind(url: str) -> str:
    """`redis`, `amqp`, or the URL's scheme for any other transport (configured as Celery's defaults)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in REDIS_SCHEMES:
        return "redis"
    if scheme in AMQP_SCHEMES:
        return "amqp"
    return scheme


def dead_letter_queue_name(queue: str) -> str:
    return f"{queue}.dead-letter"


def task_queues(settings: Settings) -> tuple[Queue, ...]:
    """The request queue and the maintenance queue, as this broker wants them declared."""
    names = (settings.task_queue, settings.maintenance_queue)
    if broker_kind(settings.broker_url) != "amqp":
        return tuple(Queue(name) for name in names)
    return tuple(_quorum_queue(name, settings.broker_delivery_limit) for name in names)


def _quorum_queue(name: str, delivery_limit: int) -> Queue:
    return Queue(
        name,
        Exchange(name, type="topic", durable=True),
        routing_key=name,
        durable=True,
        queue_arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": dead_letter_queue_name(name),
            "x-dead-letter-routing-key": dead_letter_queue_name(name),
        },
    )


def dead_letter_queues(queues: Iterable[Queue]) -> tuple[Queue, ...]:
    """Where RabbitMQ parks the messages of `queues` over their delivery limit: one for each queue
    declared with a dead-letter exchange (none on other brokers)."""
    return tuple(
        Queue(name, Exchange(name, type="direct", durable=True), routing_key=name, durable=True,
              queue_arguments={"x-queue-type": "quorum"})
        for queue in queues
        if (name := (queue.queue_arguments or {}).get("x-dead-letter-exchange"))
    )


def broker_countdown(countdown: float, broker_url: str) -> float:
    """A retry's countdown as this broker can honour it. RabbitMQ's native delayed delivery counts
    whole seconds and refuses a delay under one (Celery then rejects the message, unretried): round
    up to at least a second there."""
    if broker_kind(broker_url) == "amqp":
        return float(max(1, math.ceil(countdown)))
    return countdown


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    kind = broker_kind(settings.broker_url)
    if kind == "redis":
        return redis_transport_options(settings)
    if kind == "amqp":
        return {"confirm_publish": True, **PUBLISH_CONNECT_OPTIONS}
    return {}


def result_backend_transport_options(settings: Settings) -> dict[str, Any]:
    return redis_transport_options(settings) if broker_kind(settings.result_backend) == "redis" else {}


def redis_transport_options(settings: Settings) -> dict[str, Any]:
    return {
        "visibility_timeout": settings.visibility_timeout,
        # Kombu sweeps for expired unacknowledged messages only every interval x throttle
        # (10 s x 10 by default): sweep often enough that a dead worker's messages come back
        # about when the visibility timeout says, not 100 s later.
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout // 5)),
        "unacked_restore_throttle": 1,
    }


def broker_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings that depend on the broker kind."""
    config: dict[str, Any] = {
        "task_queues": task_queues(settings),
        "broker_transport_options": broker_transport_options(settings),
        "result_backend_transport_options": result_backend_transport_options(settings),
    }
    if broker_kind(settings.broker_url) == "redis":
        config["visibility_timeout"] = settings.visibility_timeout  # kombu reads it here too
    if broker_kind(settings.broker_url) == "amqp":
        config["broker_heartbeat"] = settings.broker_heartbeat_seconds
    return config


class DeclareDeadLetterQueues(bootsteps.StartStopStep):
    """Before the worker consumes, the dead-letter exchanges and queues exist (a message RabbitMQ
    dead-letters to an exchange that does not exist is dropped). Runs again after a reconnect."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, c: Any) -> None:
        queues = dead_letter_queues(c.app.conf.task_queues or ())
        if queues:
            channel = c.connection.default_channel
            for queue in queues:
                queue.bind(channel).declare()


def install_dead_letter_queues(app: Celery) -> None:
    app.steps["consumer"].add(DeclareDeadLetterQueues)
