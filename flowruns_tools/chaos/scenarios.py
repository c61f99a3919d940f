"""The scenarios: worker SIGKILL, PostgreSQL restart, Redis restart, duplicate delivery. Each sets up
a World (database, Redis database, queue, worker, producer), runs its batch with its faults, drains,
then checks."""

import contextlib
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from flowruns_tools.chaos.checks import (
    ScenarioResult,
    SlotMonitor,
    apply_slot_reading,
    delivery_counts,
    note_deliveries,
    read_recorded,
    verify_lifecycles,
)
from flowruns_tools.chaos.producer import RESEND_AFTER_SECONDS, Driver
from flowruns_tools.chaos.services import (
    DEFAULT_PG_PORT,
    DEFAULT_REDIS_DB,
    DEFAULT_REDIS_PORT,
    WORKER_PROCESSES,
    WORKER_START_SECONDS,
    ChaosSetupError,
    PostgresCluster,
    RedisServer,
    WorkerGroup,
    WorkerProcess,
    _unacked_queue,
    database_on,
    find_pg_bindir,
    forget_queue,
    free_port,
    redis_database,
    redis_url_with_db,
    say,
    worker_env,
)
from flowruns_tools.chaos.rabbitmq import (
    DEFAULT_RABBITMQ_PORT,
    DEFAULT_RABBITMQ_URL,
    RabbitNode,
    queue_backlog,
    rabbitmq_vhost,
)
from flowruns_tools.chaos.workload import Lifecycles
from tasks.broker_topology import broker_kind

VISIBILITY_TIMEOUT_SECONDS = 5
"""Fault runs use a short visibility timeout, so a dead worker's messages come back quickly."""
RETRY_BACKOFF_MAX_SECONDS = 2
"""Retry countdowns stay well below the visibility timeout (an ETA message is unacknowledged)."""
DRAIN_SECONDS = 150.0
"""How long to wait for redelivered copies after the batch (kombu sweeps unacked messages at most every ~100 s)."""


@dataclass(frozen=True)
class Size:
    runs: int
    deployments: int
    limit: int
    window: int
    """Runs in flight at once (each with one request outstanding)."""
    bad_bodies: int
    deadline_seconds: float


FULL = Size(runs=1000, deployments=10, limit=5, window=100, bad_bodies=2000, deadline_seconds=900)
SHORT = Size(runs=100, deployments=4, limit=3, window=24, bad_bodies=300, deadline_seconds=240)


@dataclass
class Options:
    """Where the scenarios run and how big they are."""

    database_url: str
    """The configured PostgreSQL server (scenarios create databases of their own on it)."""
    redis_url: str
    """The configured Redis server (scenarios use database `redis_db` on it)."""
    short: bool = False
    seed: int = 0
    redis_db: int = DEFAULT_REDIS_DB
    exclusive_redis: bool = True
    pg_bindir: str | None = None
    pg_port: int = DEFAULT_PG_PORT
    redis_port: int = DEFAULT_REDIS_PORT
    log_dir: Path | None = None
    worker_code: Path | None = None
    """Run workers from this source tree (an exported commit, say) instead of this checkout."""
    broker: str = "redis"
    """`redis`: the scenario's Redis database is broker and result backend; `rabbitmq`: a vhost of the
    scenario's own on `rabbitmq_url` is the broker, results stay in the Redis database."""
    rabbitmq_url: str = DEFAULT_RABBITMQ_URL
    rabbitmq_port: int = DEFAULT_RABBITMQ_PORT

    @property
    def size(self) -> Size:
        return SHORT if self.short else FULL


def table_counts(database_url: str) -> dict[str, int]:
    """Rows per table (the proof that refused requests wrote nothing)."""
    from models.orm import Base

    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return {table.name: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                    for table in Base.metadata.sorted_tables}
    finally:
        engine.dispose()


class World:
    """One scenario's database, Redis database, queue, worker and producer."""

    def __init__(self, name: str, database_url: str, broker_url: str, log_dir: Path, copies: int = 1,
                 worker_settings: dict[str, Any] | None = None, loglevel: str = "INFO",
                 concurrency: int = WORKER_PROCESSES, worker_code: Path | None = None,
                 resend_after: float = RESEND_AFTER_SECONDS, worker_app: str = "tasks",
                 result_backend: str | None = None, rabbitmq_node: str | None = None,
                 hosts: Callable[[dict[str, str], Path], WorkerGroup] | None = None) -> None:
        """`hosts`: the workers, made from the scenario's worker environment and log directory (default:
        one worker, on this host)."""
        self.name = name
        self.database_url = database_url
        self.broker_url = broker_url
        self.result_backend = result_backend or broker_url
        self.rabbitmq_node = rabbitmq_node
        self.queue = f"flowruns-chaos-{name}-{uuid.uuid4().hex[:8]}"
        self.driver = Driver(broker_url, self.result_backend, self.queue, copies=copies, resend_after=resend_after)
        settings = {
            "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
            "task_retry_backoff_max_seconds": RETRY_BACKOFF_MAX_SECONDS,
            "concurrency_slot_wait_seconds": 0,
            **(worker_settings or {}),
        }
        env = worker_env(database_url, broker_url, self.result_backend, self.queue, **settings)
        self.supervisor_events: list[str] = []
        self._next_supervision = 0.0
        self.workers = hosts(env, log_dir) if hosts is not None else WorkerGroup([WorkerProcess(
            env, log_dir, name, concurrency=concurrency, loglevel=loglevel, code=worker_code, app=worker_app)])

    @property
    def worker(self) -> WorkerProcess:
        """The first (usually the only) worker."""
        return self.workers.workers[0]

    def tick(self) -> None:
        """Between pumps: supervise the worker (at most twice a second)."""
        now = time.monotonic()
        if now < self._next_supervision:
            return
        self._next_supervision = now + 0.5
        if (event := self.workers.supervise()) is not None:
            self.supervisor_events.append(event)
            say(f"  [{self.name}] !! {event}")

    def start_worker(self) -> None:
        self.workers.start()
        self.workers.wait_for_children(WORKER_START_SECONDS)
        self.driver.call("flow_runs.count_flow_runs", {}, timeout=WORKER_START_SECONDS)

    def make_deployments(self, count: int, limit: int | None) -> tuple[str, list[str]]:
        flow = self.driver.call("flows.create_flow", {"flow": {"name": f"chaos-{self.name}"}})
        deployments = [
            self.driver.call("deployments.create_deployment", {"deployment": {
                "name": f"limited-{index}", "flow_id": flow["id"], "concurrency_limit": limit,
                "concurrency_options": {"collision_strategy": "ENQUEUE"} if limit else None,
            }})["id"]
            for index in range(count)
        ]
        return flow["id"], deployments

    @property
    def on_rabbitmq(self) -> bool:
        return broker_kind(self.broker_url) == "amqp"

    def backlog(self) -> tuple[int, int]:
        """Messages waiting in the queue, and delivered but not yet acknowledged."""
        if self.on_rabbitmq:
            return queue_backlog(self.broker_url, self.queue, self.rabbitmq_node)
        client = redis.Redis.from_url(self.broker_url, socket_connect_timeout=1, socket_timeout=5)
        try:
            queued = int(client.llen(self.queue))
            unacked = sum(1 for raw in client.hvals("unacked") if _unacked_queue(raw) == self.queue)
            return queued, unacked
        finally:
            client.close()

    def drain(self, timeout: float = DRAIN_SECONDS) -> bool:
        """Wait until no message of the queue is waiting or unacknowledged (redelivered copies ran)."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while time.monotonic() < deadline:
            self.driver.pump(0.05)
            self.tick()
            try:
                quiet = quiet + 1 if self.backlog() == (0, 0) else 0
            except (redis.exceptions.RedisError, ChaosSetupError):
                quiet = 0
            if quiet >= 3:
                return True
            time.sleep(0.3)
        return False

    def close(self, forget: bool) -> None:
        self.workers.stop()
        self.driver.close()
        if forget and not self.on_rabbitmq:
            forget_queue(self.broker_url, self.queue)


@contextlib.contextmanager
def world(options: Options, name: str, *, database_server: str | None = None, broker_url: str | None = None,
          **kwargs: Any) -> Iterator[World]:
    """A World on the configured services (or the given ones), torn down afterwards."""
    with contextlib.ExitStack() as stack:
        log_dir = options.log_dir
        if log_dir is None:
            log_dir = Path(tempfile.mkdtemp(prefix="flowruns-chaos-logs-"))
            stack.callback(shutil.rmtree, log_dir, True)
        log_dir.mkdir(parents=True, exist_ok=True)
        database_url = stack.enter_context(database_on(database_server or options.database_url))
        shared = broker_url is None and not options.exclusive_redis
        redis_url = stack.enter_context(redis_database(
            redis_url_with_db(options.redis_url, options.redis_db), options.exclusive_redis))
        if options.broker == "rabbitmq":
            # results in the scenario's Redis database; requests through RabbitMQ (a vhost of its own
            # unless the scenario brought its own node)
            kwargs.setdefault("result_backend", redis_url)
            if broker_url is None:
                broker_url = stack.enter_context(rabbitmq_vhost(options.rabbitmq_url))
        elif broker_url is None:
            broker_url = redis_url
        scenario = World(name, database_url, broker_url, log_dir, worker_code=options.worker_code, **kwargs)
        stack.callback(scenario.close, shared)
        yield scenario


def note_supervisor(result: ScenarioResult, scenario: World) -> None:
    """A worker that died on its own is an availability defect even when no request suffered: kept apart."""
    result.crashes = list(scenario.supervisor_events)


class FaultPlan(threading.Thread):
    """Runs each fault once the batch has come that far (fraction of runs finished)."""

    def __init__(self, name: str, steps: list[tuple[float, Callable[[], str]]], progress: Callable[[], float],
                 in_flight: Callable[[], int]) -> None:
        super().__init__(name=f"faults-{name}", daemon=True)
        self.scenario = name
        self.steps = steps
        self.progress = progress
        self.in_flight = in_flight
        self.events: list[str] = []
        self.failure: str | None = None
        self._halt = threading.Event()
        self._began = time.monotonic()

    def run(self) -> None:
        for at, action in self.steps:
            while self.progress() < at and not self._halt.is_set():
                self._halt.wait(0.01)
            if self._halt.is_set():
                return
            moment = f"at {self.progress():.0%} of runs, +{time.monotonic() - self._began:.1f}s, " \
                     f"{self.in_flight()} requests in flight"
            try:
                event = f"{action()} ({moment})"
            except Exception as error:  # noqa: BLE001 - reported as the scenario's error
                self.failure = f"fault failed: {type(error).__name__}: {error}"
                return
            self.events.append(event)
            say(f"  [{self.scenario}] {event}")

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=120)


def run_batch(scenario: World, workload: Lifecycles, steps: list[tuple[float, Callable[[], str]]],
              result: ScenarioResult, deadline_seconds: float, keep_worker: bool = False) -> None:
    """Drive the workload with the faults, drain, then check everything against the database."""
    monitor = SlotMonitor(scenario.database_url)
    monitor.start()
    faults = FaultPlan(scenario.name, steps, workload.progress, lambda: len(scenario.driver.pending))
    last_report = [time.monotonic()]
    started = time.monotonic()

    def report() -> None:
        scenario.tick()
        now = time.monotonic()
        if now - last_report[0] >= 2.0:
            last_report[0] = now
            driver = scenario.driver
            say(f"  [{scenario.name}] runs {workload.finished}/{len(workload.tracks)} done · "
                f"{len(driver.requests)} requests · {len(driver.pending)} in flight · "
                f"{driver.resends} re-sent · {now - started:.0f}s")

    workload.start()
    faults.start()
    finished = scenario.driver.run_until(lambda: workload.done() and not faults.is_alive(),
                                         started + deadline_seconds, report)
    faults.stop()
    result.faults = faults.events
    if faults.failure:
        result.error(faults.failure)
    if not finished:
        result.error(f"the batch did not finish within {deadline_seconds:.0f}s "
                     f"({workload.finished}/{len(workload.tracks)} runs)")
    if not scenario.workers.alive():
        scenario.workers.start()  # whatever is still queued must drain
    say(f"  [{scenario.name}] batch done in {time.monotonic() - started:.1f}s; draining redelivered copies ...")
    drain_started = time.monotonic()
    if not scenario.drain():
        result.error(f"messages still queued or unacknowledged after {DRAIN_SECONDS:.0f}s: {scenario.backlog()}")
    result.notes["drain_seconds"] = round(time.monotonic() - drain_started, 1)
    apply_slot_reading(result, monitor.finish())
    if not keep_worker:
        scenario.workers.stop()
    verify_lifecycles(result, workload, read_recorded(scenario.database_url))
    note_deliveries(result, scenario.driver, scenario.workers.log_text())
    note_supervisor(result, scenario)
    result.notes["runs"] = len(workload.tracks)
    result.notes["awaiting_slot_rejections"] = sum(track.waits for track in workload.tracks)


def _lifecycles(options: Options, scenario: World, rng: random.Random, *, cleanups: bool = False,
                window: int | None = None, runs: int | None = None) -> Lifecycles:
    size = options.size
    flow_id, deployments = scenario.make_deployments(size.deployments, size.limit)
    return Lifecycles(scenario.driver, flow_id, deployments, runs or size.runs, window or size.window, rng,
                      cleanups=cleanups)


def worker_sigkill(options: Options) -> ScenarioResult:
    """SIGKILL pool processes (their task is requeued at once) and the main process (its messages come
    back after the visibility timeout), restart, drain."""
    result = ScenarioResult("worker-sigkill")
    rng = random.Random(options.seed)
    with world(options, "worker-sigkill") as scenario:
        scenario.start_worker()
        workload = _lifecycles(options, scenario, rng)

        def kill_child() -> str:
            return scenario.worker.kill_child(rng)

        def kill_main() -> str:
            scenario.worker.await_busy()
            killed = scenario.worker.kill_all()
            time.sleep(VISIBILITY_TIMEOUT_SECONDS + 1)  # a supervisor's restart delay
            scenario.worker.start()
            scenario.worker.wait_for_children(WORKER_START_SECONDS)
            return f"{killed}; restarted {VISIBILITY_TIMEOUT_SECONDS + 1}s later"

        kinds = [kill_child, kill_child, kill_main] + ([] if options.short else [kill_child, kill_main])
        rng.shuffle(kinds)
        moments = sorted(rng.uniform(0.1, 0.8) for _ in kinds)
        run_batch(scenario, workload, list(zip(moments, kinds)), result, options.size.deadline_seconds)
        result.notes["visibility_timeout_seconds"] = VISIBILITY_TIMEOUT_SECONDS
    if result.notes.get("tasks_interrupted_by_kills", 0) + result.notes.get("broker_redeliveries", 0) == 0:
        result.error("the kills interrupted nothing: no task was lost by a pool process and nothing was redelivered")
    return result


def postgres_restart(options: Options) -> ScenarioResult:
    """Restart the scenario's own PostgreSQL cluster mid-batch: tasks retry with backoff."""
    result = ScenarioResult("postgres-restart")
    rng = random.Random(options.seed + 1)
    cluster = PostgresCluster(find_pg_bindir(options.pg_bindir), free_port(options.pg_port))
    try:
        cluster.start()
        with world(options, "postgres-restart", database_server=cluster.url()) as scenario:
            scenario.start_worker()
            workload = _lifecycles(options, scenario, rng)

            def restart(mode: str, down: float) -> Callable[[], str]:
                def action() -> str:
                    cluster.stop(mode)
                    time.sleep(down)
                    cluster.start()
                    return f"pg_ctl stop -m {mode} on port {cluster.port}, down {down:.0f}s, started again"
                return action

            steps = [(0.35, restart("immediate", 2.0))] if options.short else \
                [(0.25, restart("fast", 2.0)), (0.6, restart("immediate", 3.0))]
            run_batch(scenario, workload, steps, result, options.size.deadline_seconds)
    finally:
        cluster.close()
    if result.notes.get("connection_retries", 0) == 0:
        result.error("the restarts caused no connection retry: the fault missed the batch")
    return result


def redis_restart(options: Options) -> ScenarioResult:
    """Restart the scenario's own redis-server (append-only, fsync always) mid-batch: queued requests survive."""
    result = ScenarioResult("redis-restart")
    rng = random.Random(options.seed + 2)
    server = RedisServer(free_port(options.redis_port))
    try:
        server.start()
        with world(options, "redis-restart", broker_url=server.url(0)) as scenario:
            scenario.start_worker()
            workload = _lifecycles(options, scenario, rng)
            backlogs: list[tuple[int, int]] = []

            def restart(how: str, down: float) -> Callable[[], str]:
                def action() -> str:
                    before = scenario.backlog()
                    server.stop(how)
                    time.sleep(down)
                    server.start()
                    after = scenario.backlog()
                    backlogs.append((before[0], after[0]))
                    return (f"redis-server {'SHUTDOWN' if how == 'shutdown' else 'SIGTERM'} on port {server.port}, "
                            f"down {down:.1f}s, started again: queued {before[0]} before, {after[0]} after, "
                            f"unacknowledged {before[1]} before, {after[1]} after")
                return action

            steps = [(0.2, restart("shutdown", 1.5))] if options.short else \
                [(0.15, restart("shutdown", 1.5)), (0.55, restart("sigterm", 3.0))]
            run_batch(scenario, workload, steps, result, options.size.deadline_seconds)
            result.notes["queued_before_after_restart"] = backlogs
    finally:
        server.close()
    return result


def broker_restart(options: Options) -> ScenarioResult:
    """Restart the broker mid-batch: a redis-server or a RabbitMQ node of the scenario's own."""
    return rabbitmq_restart(options) if options.broker == "rabbitmq" else redis_restart(options)


def rabbitmq_restart(options: Options) -> ScenarioResult:
    """Stop the scenario's own RabbitMQ node mid-batch and start it again: the durable quorum
    queue keeps what was queued, unacknowledged deliveries come back, the worker and the producer
    reconnect."""
    result = ScenarioResult("rabbitmq-restart")
    rng = random.Random(options.seed + 2)
    node = RabbitNode(free_port(options.rabbitmq_port))
    try:
        node.start()
        with world(options, "rabbitmq-restart", broker_url=node.url(), rabbitmq_node=node.name) as scenario:
            scenario.start_worker()
            workload = _lifecycles(options, scenario, rng)

            def restart(down: float) -> Callable[[], str]:
                def action() -> str:
                    before = scenario.backlog()
                    node.stop()
                    time.sleep(down)
                    node.start()
                    after = scenario.backlog()
                    return (f"rabbitmq node {node.name} stopped on port {node.port}, down {down:.1f}s, started again: "
                            f"ready {before[0]} before, {after[0]} after")
                return action

            steps = [(0.2, restart(1.5))] if options.short else [(0.15, restart(1.5)), (0.55, restart(3.0))]
            run_batch(scenario, workload, steps, result, options.size.deadline_seconds)
    finally:
        node.close()
    return result


def duplicate_delivery(options: Options) -> ScenarioResult:
    """Every message sent twice with the same task id; then every request replayed once more after its
    run finished. Exactly one effect each; the replays change nothing and return the recorded outcomes."""
    result = ScenarioResult("duplicate-delivery")
    rng = random.Random(options.seed + 3)
    with world(options, "duplicate-delivery", copies=2) as scenario:
        scenario.start_worker()
        workload = _lifecycles(options, scenario, rng, cleanups=True)
        run_batch(scenario, workload, [], result, options.size.deadline_seconds, keep_worker=True)
        say(f"  [{scenario.name}] replaying all {len(workload.requests)} requests after their runs finished ...")
        before = table_counts(scenario.database_url)
        replays = [(original, scenario.driver.replay(original)) for original in workload.requests]
        replayed = scenario.driver.run_until(lambda: all(copy.meta is not None for _o, copy in replays),
                                             time.monotonic() + options.size.deadline_seconds, scenario.tick)
        if not replayed:
            result.error("replays got no result in time")
        result.messages += len(replays)
        changed = sum(1 for original, copy in replays if not copy.succeeded or copy.result != original.result)
        if changed:
            result.duplicated += changed
            result.error(f"{changed} replays returned something other than the recorded outcome")
        if not scenario.drain():  # the follow-ups the replays sent again run too, and change nothing either
            result.error(f"messages still queued after the replays: {scenario.backlog()}")
        after = table_counts(scenario.database_url)
        if after != before:
            result.error(f"replays changed the database: {before} -> {after}")
        result.notes["replayed"] = len(replays)
        note_supervisor(result, scenario)
        scenario.worker.stop()
        received, _retried, absorbed, _lost = delivery_counts(scenario.worker.log_text())
        result.notes["absorbed_by_inbox"] = absorbed
        result.notes["deliveries"] = sum(received.values())
    return result
