"""Fixtures for the task tests.

Fast tests run task bodies in-process (`task.apply`) against the test database; follow-up tasks
are captured instead of published, and the app's broker is the in-memory one, so nothing
reaches a developer's Redis.

Integration tests start a real worker (`celery -A tasks worker`, prefork, two processes) as a
subprocess on the real Redis: broker DB 14, results DB 15, on a queue of its own per test
session, so neither a developer's worker nor a concurrent test run is disturbed. The producer is
a bare `Celery()` app without any flowruns code, sending by name with JSON kwargs.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import celery.exceptions
import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from celery.result import AsyncResult
from kombu import Queue

import tasks
import tasks.base
from flowruns_tools.chaos.producer import publish_raw
from models import database
from models.orm import Base
from tasks.base import FollowUp
from tasks.broker_topology import broker_kind

REDIS_URL = os.environ.get("FLOWRUNS_TEST_REDIS_URL", "redis://127.0.0.1:6379")
BROKER_URL = f"{REDIS_URL}/14"
RESULT_BACKEND = f"{REDIS_URL}/15"
REPOSITORY = Path(__file__).resolve().parent.parent
WORKER_START_SECONDS = 60.0
RESULT_SECONDS = 30.0

# ---------------------------------------------------------------------------------- in-process


@pytest.fixture(scope="session", autouse=False)
def offline_app() -> Celery:
    """flowruns' app on the in-memory broker: a stray publish never reaches a real Redis."""
    tasks.app.conf.update(broker_url="memory://", result_backend="cache+memory://")
    return tasks.app


@pytest.fixture
def follow_ups(monkeypatch: pytest.MonkeyPatch, offline_app: Celery) -> list[FollowUp]:
    """The follow-up tasks the task bodies asked for, in order (captured, not published)."""
    sent: list[FollowUp] = []
    monkeypatch.setattr(tasks.base, "send_follow_ups", lambda _task, items: sent.extend(items))
    return sent


def new_id() -> str:
    return str(uuid.uuid4())


def apply(task: Any, task_id: str | None = None, **kwargs: Any) -> Any:
    """Run the task body in-process with JSON kwargs; the eager result (state, result)."""
    return task.apply(kwargs=json.loads(json.dumps(kwargs, default=str)), task_id=task_id or new_id())


def ok(task: Any, task_id: str | None = None, **kwargs: Any) -> Any:
    """The task's JSON result; fails the test with the error if the task failed."""
    result = apply(task, task_id, **kwargs)
    assert result.state == "SUCCESS", f"{task.name} failed: {result.result!r}"
    return result.result


def refused(task: Any, **kwargs: Any) -> str:
    """The message of the `ValidationError` the task failed with; fails the test otherwise."""
    result = apply(task, **kwargs)
    assert result.state == "FAILURE" and type(result.result).__name__ == "ValidationError", result.result
    return str(result.result)


def row_counts(url: str | None = None) -> dict[str, int]:
    """Rows per table: proof that a failed request wrote nothing."""
    engine = database.get_engine(url)
    with engine.connect() as connection:
        return {
            table.name: connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in Base.metadata.sorted_tables
        }


# -------------------------------------------------------------------------------- real worker


@dataclass
class Worker:
    """A worker subprocess and a foreign producer that talks to it."""

    producer: Celery
    queue: str
    hostname: str
    process: subprocess.Popen[bytes]
    log: Path
    results: redis.Redis
    environment: dict[str, str] | None = None

    def restart(self) -> None:
        """Start the same worker command again (after it died or was stopped), logging to the same file."""
        stop_process(self.process)
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(self.process.args, cwd=REPOSITORY, env=self.environment,
                                            stdout=output, stderr=subprocess.STDOUT)

    def send(self, name: str, task_id: str | None = None, **options: Any) -> AsyncResult:
        return self.producer.send_task(name, task_id=task_id or new_id(), **options)

    def call(self, name: str, task_id: str | None = None, **kwargs: Any) -> Any:
        """Send `name` with JSON kwargs and wait for its result (raising its error)."""
        return self.send(name, task_id, kwargs=kwargs).get(timeout=RESULT_SECONDS)

    def outcome(self, name: str, task_id: str | None = None, **kwargs: Any) -> AsyncResult:
        """Send and wait without raising; the finished result."""
        result = self.send(name, task_id, kwargs=kwargs)
        result.get(timeout=RESULT_SECONDS, propagate=False)
        return result

    def raw_meta(self, task_id: str) -> dict[str, Any]:
        """The result exactly as stored in the backend: what any producer, in any language, reads."""
        raw = self.results.get(f"celery-task-meta-{task_id}")
        assert raw is not None, f"no result stored for {task_id}"
        return json.loads(raw)  # type: ignore[no-any-return]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def send_raw(self, name: str, kwargs_json: str, task_id: str | None = None, **headers: Any) -> AsyncResult:
        """Publish a protocol 2 message whose kwargs are the given JSON text, as it is."""
        task_id = task_id or new_id()
        publish_raw(self.producer, name, kwargs_json, task_id, self.queue, **headers)
        return self.producer.AsyncResult(task_id)


def _redis_available(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1).ping())
    except redis.exceptions.ConnectionError:
        return False


@pytest.fixture(scope="session")
def worker(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """The session's worker on the test database (retries shortened: 3, backoff cap 1 s)."""
    with running_worker(database_url, tmp_path_factory.mktemp("worker")) as handle:
        yield handle


@contextmanager
def running_worker(
    database_url: str, directory: Path, app: str = "tasks", queue: str | None = None, broker_url: str = BROKER_URL,
    pool: str = "prefork", concurrency: int = 2, **settings: str,
) -> Iterator[Worker]:
    """`celery -A <app> worker` on a queue of its own (or `queue`, with no FLOWRUNS_TASK_QUEUE set
    when it is the default); `settings` are extra FLOWRUNS_* values. On a RabbitMQ `broker_url`
    (a vhost of the test's own, `tests.rabbitmq`) the worker declares the queues and the producer
    declares nothing, as the README tells producers to do."""
    on_redis = broker_kind(broker_url) == "redis"
    if on_redis and not _redis_available(broker_url):
        pytest.skip(f"no Redis at {REDIS_URL}")
    default_queue = queue == "flowruns"
    queue = queue or f"flowruns-test-{uuid.uuid4().hex[:10]}"
    hostname = f"{queue}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
    log = directory / f"{queue}.log"
    env = {
        **{name: value for name, value in os.environ.items() if name != "FLOWRUNS_TASK_QUEUE"},
        "FLOWRUNS_DATABASE_URL": database_url,
        "FLOWRUNS_BROKER_URL": broker_url,
        "FLOWRUNS_RESULT_BACKEND": RESULT_BACKEND,
        **({} if default_queue else {"FLOWRUNS_TASK_QUEUE": queue}),
        "FLOWRUNS_TASK_MAX_RETRIES": "3",
        "FLOWRUNS_TASK_RETRY_BACKOFF_MAX_SECONDS": "1",
        **{f"FLOWRUNS_{name.upper()}": value for name, value in settings.items()},
    }
    command = [
        sys.executable, "-m", "celery", "-A", app, "worker",
        "--loglevel", "INFO", "--concurrency", str(concurrency), "--pool", pool, "--hostname", hostname,
        "--without-mingle", "--without-gossip",
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=output, stderr=subprocess.STDOUT)
    producer = Celery("foreign-producer", broker=broker_url, backend=RESULT_BACKEND, set_as_current=False)
    producer.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True)
    if not on_redis:
        producer.conf.task_queues = [Queue(queue, no_declare=True)]
    results = redis.Redis.from_url(RESULT_BACKEND)
    handle = Worker(producer=producer, queue=queue, hostname=hostname, process=process, log=log, results=results,
                    environment=env)
    try:
        _wait_until_ready(handle)
        yield handle
    finally:
        stop_process(handle.process)  # the one running now, after any restart
        producer.close()
        if on_redis:
            broker = redis.Redis.from_url(broker_url)
            for name in (queue, f"{queue}.maintenance"):
                broker.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
            broker.close()
        _forget_results_of(results, queue)
        results.close()


def _forget_results_of(results: redis.Redis, queue: str) -> None:
    """Delete the results our worker stored (extended results name their queue); others stay."""
    for key in results.scan_iter(match="celery-task-meta-*", count=500):
        raw = results.get(key)
        if raw is not None and json.loads(raw).get("queue") == queue:
            results.delete(key)


def _wait_until_ready(worker: Worker) -> None:
    deadline = time.monotonic() + WORKER_START_SECONDS
    while time.monotonic() < deadline:
        if worker.process.poll() is not None:
            raise RuntimeError(f"the worker exited:\n{worker.log_text()}")
        result = worker.send("flow_runs.count_flow_runs", kwargs={})
        try:
            result.get(timeout=5, propagate=False)  # any answer, even a failure, means it consumes
            return
        except celery.exceptions.TimeoutError:
            continue
    raise RuntimeError(f"the worker did not start:\n{worker.log_text()}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Warm shutdown of a process a fixture started (by its pid), then a kill if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
