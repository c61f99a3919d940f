"""The Celery application, configured from the one settings object.

Reliability baseline (docs/ECOSYSTEM-NOTES.md sections 1 and 7): JSON only, late acks with
rejection on worker loss, one reserved message per process, task events on so Flower sees every
task by name, and per broker what `tasks.broker_topology` says (Redis: the visibility timeout in
all three places; RabbitMQ: quorum queues, a delivery limit, dead-letter queues, publisher confirms). The JSON is encoded and
decoded with orjson (`tasks.json_serializer`: kombu's `json`, same content type, same values).
"""

import gc
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init, worker_ready

from models.database import dispose_engines
from models.settings import Settings, get_settings
from tasks import log_format  # noqa: F401  (JSON logs when FLOWRUNS_LOG_FORMAT=json)
from tasks.beat import beat_schedule
from tasks.broker_topology import PUBLISH_RETRY_POLICY, broker_config, install_dead_letter_queues
from tasks.json_serializer import register_json_serializer

RESULT_EXPIRES_SECONDS = 24 * 3600
"""How long a result stays readable in the backend (a producer re-sends well within this)."""

SOFT_SHUTDOWN_SECONDS = 10.0
"""On a stop signal, running tasks get this long to finish before their messages are re-queued."""


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery settings for `settings` (a plain dict, so tests can inspect it)."""
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        # A queue of our own (never Celery's shared default `celery`): on a Redis that also serves
        # another Celery app, neither side's workers take the other's messages. Beat's maintenance
        # tasks have a queue of their own; a worker consumes both unless `-Q` says otherwise.
        "task_default_queue": settings.task_queue,
        "task_routes": {"maintenance.*": {"queue": settings.maintenance_queue}},
        # JSON only: a pickle message is refused before anything runs.
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # At least once: ack after the task returned; a killed worker's message is delivered again.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Bounded work: past the soft limit a request gives up its attempt and is retried; past
        # the hard one its process is killed and the message delivered again (tasks.worker_losses).
        "task_soft_time_limit": settings.task_soft_time_limit_seconds,
        "task_time_limit": settings.task_time_limit_seconds,
        "worker_soft_shutdown_timeout": SOFT_SHUTDOWN_SECONDS,
        "broker_connection_retry_on_startup": True,
        # A follow-up or a retry published while the broker restarts waits it out (about 20 s).
        # Celery's default gives up after about a second, and a retry that cannot be published
        # ends as Reject without requeue: a FAILURE result for a request whose effect committed.
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        # Monitoring: task events (sent, received, started, ...), and name and kwargs kept with the result.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "result_extended": True,
        "result_expires": RESULT_EXPIRES_SECONDS,
        "enable_utc": True,
        "timezone": "UTC",
        # The queues and transport options of this broker kind (tasks.broker_topology).
        **broker_config(settings),
    }


class GuardedTask(Task):
    """The base of every task of the app, Celery's built-in ones included: each message passes the
    door (`tasks.admission`) before the main process hands it on, and a message whose pool process
    keeps dying is parked (`tasks.worker_losses`)."""

    Strategy = "tasks.admission:guarded_strategy"
    Request = "tasks.worker_losses:CountingRequest"


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from `settings` (the environment's by default) with the beat schedule;
    kombu's `json` serializer (process-wide) becomes orjson's."""
    settings = settings or get_settings()
    register_json_serializer()
    app = Celery("flowruns", task_cls=GuardedTask)
    app.conf.update(celery_config(settings), beat_schedule=beat_schedule(settings))
    install_dead_letter_queues(app)
    return app


app = create_app()


@worker_process_init.connect
def _dispose_engines_after_fork(**_: Any) -> None:
    """A forked pool process must not share its parent's pooled database connections."""
    dispose_engines()
    _freeze_start_up_objects()


@worker_ready.connect
def _freeze_after_start_up(**_: Any) -> None:
    _freeze_start_up_objects()  # the main process (solo and thread pools run tasks there)


def _freeze_start_up_objects() -> None:
    """Move everything start-up made (modules, app, schemas) out of the garbage collector's sight:
    full collections then only walk what requests allocate, which halves the worst read latencies."""
    gc.collect()
    gc.freeze()
