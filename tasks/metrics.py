"""`flowruns metrics`: a Prometheus endpoint for what only flowruns knows.

Two sources. Read at each scrape: the slots each limited deployment holds against its limit
(the database) and how many requests wait in flowruns' queues (the broker). Counted from the
worker's events (the same stream Flower reads): requests by task and outcome (a transition's
ACCEPT, REJECT, WAIT or ABORT), retries by cause, requests answered from the inbox, what the
slot reconciler repaired, runs marked late. Counters start at zero when the exporter starts, as
Prometheus counters do; run one exporter per broker.

Flower's own `/metrics` (Celery's view: tasks received, succeeded and failed per worker, their
runtimes) sits beside this one; neither repeats the other.
"""

import logging
import re
import time
from collections.abc import Iterator
from typing import Any

from celery import Celery
from prometheus_client import CollectorRegistry, Counter, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from models.settings import Settings
from tasks import monitoring_events
from tasks.broker_topology import dead_letter_queues, task_queues

logger = logging.getLogger(__name__)

TRANSITION_TASKS = frozenset({"flow_runs.set_flow_run_state", "task_runs.set_task_run_state"})
OUTCOME = re.compile(r"'status': '(ACCEPT|REJECT|WAIT|ABORT)'")
"""The outcome in a transition's result, as Celery's task-succeeded event shows it (a repr)."""
RECONNECT_SECONDS = 2.0


class DatabaseAndBrokerGauges(Collector):
    """Gauges read when Prometheus scrapes: slots held and limit per deployment, queue depth."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        held = GaugeMetricFamily("flowruns_deployment_slots_held", "Slots of a deployment's limit held now",
                                 labels=["deployment_id", "deployment"])
        limit = GaugeMetricFamily("flowruns_deployment_slots_limit", "A deployment's concurrency limit",
                                  labels=["deployment_id", "deployment"])
        try:
            for deployment_id, name, value, active in _deployment_slots():
                held.add_metric([str(deployment_id), name], active)
                limit.add_metric([str(deployment_id), name], value)
        except Exception:  # noqa: BLE001 - a scrape reports what it can
            logger.warning("could not read the deployments' slots", exc_info=True)
        yield held
        yield limit
        depth = GaugeMetricFamily("flowruns_queue_depth", "Requests waiting in a flowruns queue (in a dead-letter "
                                  "queue: messages RabbitMQ parked)", labels=["queue"])
        for queue in monitored_queues(self.settings):
            try:
                depth.add_metric([queue], _queue_depth(self.app, queue))
            except Exception:  # noqa: BLE001
                logger.warning("could not read the depth of %s", queue, exc_info=True)
        yield depth


def monitored_queues(settings: Settings) -> list[str]:
    """The request and maintenance queues, and on RabbitMQ their dead-letter queues."""
    queues = task_queues(settings)
    return [queue.name for queue in (*queues, *dead_letter_queues(queues))]


def _deployment_slots() -> list[tuple[Any, str, int, int]]:
    import sqlalchemy as sa

    from models import orm
    from models.database import unit_of_work

    with unit_of_work() as session:
        rows = session.execute(
            sa.select(orm.Deployment.id, orm.Deployment.name, orm.ConcurrencyLimit.limit,
                      orm.ConcurrencyLimit.active_slots)
            .join(orm.ConcurrencyLimit, orm.ConcurrencyLimit.id == orm.Deployment.concurrency_limit_id)
        ).all()
    return [tuple(row) for row in rows]  # type: ignore[misc]


def _queue_depth(app: Celery, queue: str) -> int:
    """Messages waiting in `queue`; 0 for a queue the broker does not hold (Redis keeps no empty list)."""
    from kombu.exceptions import ChannelError

    with app.connection_for_read() as connection:
        try:
            return int(connection.channel().queue_declare(queue=queue, passive=True).message_count)
        except ChannelError:
            return 0


class InFlight:
    """The task name of each request received and not yet finished, by task id.

    One id can be in flight twice: a producer's re-send or a replay reaches the worker (and its
    task-received event is published) before the first copy's task-succeeded event.
    """

    def __init__(self) -> None:
        self._names: dict[str, tuple[str, int]] = {}

    def received(self, task_id: str, name: str) -> None:
        _, copies = self._names.get(task_id, (name, 0))
        self._names[task_id] = (name, copies + 1)

    def finished(self, task_id: str) -> str:
        """The name of a finished request ("" when its task-received event was never seen)."""
        name, copies = self._names.pop(task_id, ("", 0))
        if copies > 1:
            self._names[task_id] = (name, copies - 1)
        return name

    def forget_oldest(self, keep: int) -> None:
        """Drop the oldest ids beyond `keep` (requests whose outcome never came: a lost worker)."""
        for task_id in list(self._names)[:max(len(self._names) - keep, 0)]:
            del self._names[task_id]

    def __len__(self) -> int:
        return len(self._names)


class EventCounters:
    """Counters fed by the worker's events."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("flowruns_requests", "Finished requests by task and outcome",
                                ["task", "outcome"], registry=registry)
        self.transitions = Counter("flowruns_transitions", "Transitions by outcome", ["outcome"], registry=registry)
        self.retries = Counter("flowruns_retries", "Attempts retried, by cause", ["cause"], registry=registry)
        self.replays = Counter("flowruns_inbox_replays", "Requests answered with their recorded outcome",
                               registry=registry)
        self.repairs = Counter("flowruns_reconciler_repairs", "What the slot reconciler repaired, by kind",
                               ["kind"], registry=registry)
        self.late = Counter("flowruns_runs_marked_late", "Runs the late-runs marker marked late", registry=registry)

    def handle(self, event: dict[str, Any], names: InFlight, replayed: set[str]) -> None:
        kind = event.get("type", "")
        if kind == "task-received":
            names.received(event["uuid"], event.get("name") or "")
        elif kind == "task-succeeded":
            uuid = event.get("uuid", "")
            name = names.finished(uuid)
            outcome = OUTCOME.search(event.get("result") or "") if name in TRANSITION_TASKS else None
            self.requests.labels(name or "unknown", outcome.group(1) if outcome else "SUCCESS").inc()
            if outcome and uuid not in replayed:  # a replay decided nothing again
                self.transitions.labels(outcome.group(1)).inc()
            replayed.discard(uuid)
        elif kind == "task-failed":
            self.requests.labels(names.finished(event.get("uuid", "")) or "unknown", "FAILURE").inc()
        elif kind == monitoring_events.RETRY:
            self.retries.labels(event.get("cause") or "unknown").inc()
        elif kind == monitoring_events.REPLAY:
            self.replays.inc()
            replayed.add(event.get("task_id") or "")
        elif kind == monitoring_events.REPAIR:
            for field in ("holdings_released", "limits_corrected", "slots_adjusted"):
                if event.get(field):
                    self.repairs.labels(field).inc(event[field])
        elif kind == monitoring_events.LATE:
            self.late.inc(event.get("marked") or 0)


def follow_events(app: Celery, counters: EventCounters) -> None:
    """Count the worker's events, for good; reconnect when the broker goes away."""
    names = InFlight()
    replayed: set[str] = set()

    def on_event(event: dict[str, Any]) -> None:
        counters.handle(event, names, replayed)
        if len(names) > 100_000:
            names.forget_oldest(50_000)
        if len(replayed) > 10_000:
            replayed.clear()

    while True:
        try:
            with app.connection_for_read() as connection:
                receiver = app.events.Receiver(connection, handlers={"*": on_event})
                receiver.capture(limit=None, timeout=None, wakeup=False)
        except Exception:  # noqa: BLE001 - reconnect after any broker trouble
            logger.warning("event stream lost; reconnecting in %.0f s", RECONNECT_SECONDS, exc_info=True)
            time.sleep(RECONNECT_SECONDS)


def serve(app: Celery, settings: Settings, port: int, address: str) -> None:
    """Serve /metrics on `address:port` until interrupted."""
    registry = CollectorRegistry()
    registry.register(DatabaseAndBrokerGauges(app, settings))
    counters = EventCounters(registry)
    start_http_server(port, addr=address, registry=registry)
    logger.info("flowruns metrics on http://%s:%d/metrics", address, port)
    follow_events(app, counters)
