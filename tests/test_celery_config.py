"""The Celery configuration: JSON only, late acks, visibility timeout everywhere, beat, errors as JSON."""

import datetime
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.app.utils import find_app

import tasks
from models import orm
from models.database import get_engine
from models.errors import ObjectNotFoundError, ValidationError
from models.settings import Settings
from models.types import now_utc
from tasks.worker_app import celery_config, create_app
from tasks.base import BACKOFF_BASE_SECONDS, failure_kind, retry_countdown
from tasks.beat import beat_schedule
from tests.celery_support import (  # noqa: F401
    REPOSITORY,
    Worker,
    new_id,
    row_counts,
    running_worker,
    stop_process,
    worker,
)

CONTRACT_TASKS = {
    "flow_runs.create_flow_run", "flow_runs.read_flow_run", "flow_runs.read_flow_runs",
    "flow_runs.count_flow_runs", "flow_runs.update_flow_run", "flow_runs.set_flow_run_state",
    "flow_runs.delete_flow_run", "flow_runs.cleanup_flow_run_concurrency_slots",
    "flow_runs.read_task_run_dependencies", "flow_runs.read_flow_run_graph",
    "flow_run_states.read_flow_run_states", "flows.create_flow", "deployments.create_deployment",
    "deployments.read_deployment", "work_pools.create_work_pool", "work_queues.create_work_queue",
    "task_runs.create_task_run", "task_runs.set_task_run_state",
}
MAINTENANCE_TASKS = {
    "maintenance.reconcile_concurrency_slots", "maintenance.mark_late_runs", "maintenance.prune_processed_requests",
    "maintenance.fail_expired_pauses", "maintenance.clean_up_cancelled_runs",
}


def test_celery_dash_a_tasks_finds_the_app_with_every_task() -> None:
    app = find_app("tasks")
    assert isinstance(app, Celery) and app is tasks.app
    assert CONTRACT_TASKS | MAINTENANCE_TASKS <= set(app.tasks)


def test_configuration_follows_the_reliability_baseline() -> None:
    settings = Settings(visibility_timeout=900, task_queue="flowruns", broker_url="redis://b/3", result_backend="redis://r/4")
    conf = create_app(settings).conf
    assert conf.accept_content == ["json"] and conf.result_accept_content == ["json"]
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_cancel_long_running_tasks_on_connection_loss
    assert conf.broker_connection_retry_on_startup
    assert conf.broker_transport_options["visibility_timeout"] == 900
    assert conf.result_backend_transport_options["visibility_timeout"] == 900
    assert conf.visibility_timeout == 900
    assert conf.worker_send_task_events and conf.task_send_sent_event and conf.result_extended
    assert conf.result_expires
    assert conf.task_default_queue == "flowruns"
    assert conf.broker_url == "redis://b/3" and conf.result_backend == "redis://r/4"


def test_retry_countdowns_stay_below_the_visibility_timeout() -> None:
    settings = Settings()
    assert settings.task_retry_backoff_max_seconds < settings.visibility_timeout
    for retries in range(12):
        bound = min(settings.task_retry_backoff_max_seconds, BACKOFF_BASE_SECONDS * 2**retries)
        samples = [retry_countdown(retries, settings.task_retry_backoff_max_seconds) for _ in range(200)]
        assert all(0 <= s <= bound for s in samples)
    assert max(retry_countdown(30, 60) for _ in range(500)) > 30  # full jitter spreads over [0, cap]


def test_beat_entries_expire_before_their_next_firing() -> None:
    settings = Settings(late_runs_interval_seconds=5, reconcile_slots_interval_seconds=30, prune_requests_interval_seconds=3600)
    schedule = beat_schedule(settings)
    assert {entry["task"] for entry in schedule.values()} == MAINTENANCE_TASKS
    for entry in schedule.values():
        assert 0 < entry["options"]["expires"] < entry["schedule"]
    config = celery_config(settings)
    assert config["task_default_queue"] == "flowruns"
    assert [queue.name for queue in config["task_queues"]] == ["flowruns", "flowruns.maintenance"]
    assert config["task_routes"] == {"maintenance.*": {"queue": "flowruns.maintenance"}}


def test_contract_errors_serialise_to_json_with_class_name_and_one_message() -> None:
    backend = Celery(backend="cache+memory://", set_as_current=False).backend
    for error in (ObjectNotFoundError("flow_run_id: no flow run with id x"), ValidationError("limit: too big")):
        stored = json.loads(json.dumps(backend.prepare_exception(error, "json")))
        assert stored == {"exc_type": type(error).__name__, "exc_message": [str(error)], "exc_module": "models.errors"}
        rebuilt = backend.exception_to_python(stored)
        assert type(rebuilt) is type(error) and str(rebuilt) == str(error)
    # Without our module loaded, Celery makes a class of the same name carrying the message.
    foreign = backend.exception_to_python({"exc_type": "ObjectNotFoundError", "exc_message": ["gone"], "exc_module": "nowhere.errors"})
    assert type(foreign).__name__ == "ObjectNotFoundError" and str(foreign) == "gone"


def test_connection_losses_are_the_retried_errors() -> None:
    import kombu.exceptions
    import psycopg
    import redis
    from sqlalchemy import exc

    from models.database_errors import ErrorKind

    lost = [
        exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed the connection unexpectedly")),
        exc.InterfaceError("SELECT 1", {}, psycopg.InterfaceError("the connection is closed")),
        psycopg.OperationalError("connection failed: Connection refused"),
        redis.exceptions.ConnectionError("Connection refused"),
        kombu.exceptions.OperationalError("Error 111 connecting"),
    ]
    for error in lost:
        assert failure_kind(error) is ErrorKind.TRANSIENT, error
    assert failure_kind(ObjectNotFoundError("flow_run_id: gone")) is ErrorKind.OTHER
    assert failure_kind(exc.IntegrityError("INSERT", {}, Exception("duplicate key"))) is ErrorKind.REFUSED


@pytest.mark.usefixtures("db")
def test_a_lost_connection_is_retried_then_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Eagerly, each retry runs at once; after `task_max_retries` the connection error is the failure."""
    from sqlalchemy import exc

    from models.settings import reset_settings
    from tasks import flow_runs

    monkeypatch.setenv("FLOWRUNS_TASK_MAX_RETRIES", "2")
    reset_settings()
    attempts: list[int] = []

    def lost(*_: Any, **__: Any) -> Any:
        attempts.append(1)
        raise exc.OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(flow_runs.flow_runs, "read_flow_run", lost)
    try:
        result = flow_runs.read_flow_run.apply(kwargs={"flow_run_id": new_id()}, task_id=new_id())
    finally:
        monkeypatch.delenv("FLOWRUNS_TASK_MAX_RETRIES")
        reset_settings()
    assert result.state == "FAILURE" and isinstance(result.result, exc.OperationalError)
    assert len(attempts) == 3


def test_engines_are_disposed_in_each_forked_pool_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from celery.signals import worker_process_init

    disposed: list[bool] = []
    app_module = sys.modules["tasks.worker_app"]
    monkeypatch.setattr(app_module, "dispose_engines", lambda: disposed.append(True))
    worker_process_init.send(sender=None)
    assert disposed == [True]


# ------------------------------------------------------------------------- through a worker


class RunsCode:
    """Unpickling this creates a file: proof of code execution if a worker ever unpickled it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (str(self.marker), "w"))


@pytest.mark.integration
@pytest.mark.usefixtures("db")
def test_a_pickle_message_is_refused_and_does_nothing(worker: Worker, tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    pickler = Celery("pickler", broker=worker.producer.conf.broker_url, backend=worker.producer.conf.result_backend,
                     set_as_current=False)
    pickler.conf.update(task_serializer="pickle", accept_content=["pickle", "json"], task_default_queue=worker.queue)
    flow_id = str(uuid.uuid4())
    before = row_counts()
    pickled = pickler.send_task(
        "flow_runs.create_flow_run", kwargs={"flow_run": {"flow_id": flow_id}, "payload": RunsCode(marker)},
        task_id=new_id(), serializer="pickle",
    )
    # A JSON request sent after it completes; the pickle message was consumed before it.
    assert isinstance(worker.call("flow_runs.count_flow_runs"), int)
    time.sleep(1)
    assert not marker.exists()
    assert worker.results.get(f"celery-task-meta-{pickled.id}") is None
    assert row_counts() == before
    assert "Refusing to deserialize untrusted content of type pickle" in worker.log_text()
    assert worker.process.poll() is None
    pickler.close()


@pytest.mark.integration
def test_the_worker_consumes_the_configured_queue_with_events_on(worker: Worker) -> None:
    inspect = worker.producer.control.inspect(destination=[worker.hostname], timeout=5)
    queues = inspect.active_queues() or {}
    assert sorted(q["name"] for qs in queues.values() for q in qs) == [worker.queue, f"{worker.queue}.maintenance"]
    conf = next(iter((inspect.conf() or {}).values()))
    assert conf["task_acks_late"] is True and conf["worker_prefetch_multiplier"] == 1
    assert conf["accept_content"] == ["json"] and conf["task_default_queue"] == worker.queue
    assert (inspect.stats() or {}), "worker answers control commands"


@pytest.mark.integration
def test_a_worker_that_loses_its_database_retries_with_backoff_then_fails(tmp_path: Path) -> None:
    unreachable = "postgresql+psycopg://postgres@127.0.0.1:1/nowhere"
    with running_worker(unreachable, tmp_path) as broken:
        started = time.monotonic()
        result = broken.outcome("flow_runs.read_flow_run", flow_run_id=new_id())
        meta = broken.raw_meta(result.id)
        assert meta["status"] == "FAILURE" and meta["result"]["exc_type"] == "OperationalError"
        assert meta["retries"] == 3  # FLOWRUNS_TASK_MAX_RETRIES of the test worker
        assert time.monotonic() - started < 3 * 1 + 10  # each countdown at most the 1 s cap
        assert f"flow_runs.read_flow_run[{result.id}] lost a connection" in broken.log_text()


@pytest.mark.integration
@pytest.mark.usefixtures("db")
def test_beat_drives_the_maintenance_tasks_and_the_health_check_sees_it(
    worker: Worker, tmp_path: Path, database_url: str
) -> None:
    flow = worker.call("flows.create_flow", flow={"name": "beat"})
    overdue = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)).isoformat()
    run = worker.call(
        "flow_runs.create_flow_run",
        flow_run={"flow_id": flow["id"], "state": {"type": "SCHEDULED", "state_details": {"scheduled_time": overdue}}},
    )
    env = {
        **os.environ,
        "FLOWRUNS_BROKER_URL": worker.producer.conf.broker_url,
        "FLOWRUNS_RESULT_BACKEND": worker.producer.conf.result_backend,
        "FLOWRUNS_TASK_QUEUE": worker.queue,
        "FLOWRUNS_LATE_RUNS_INTERVAL_SECONDS": "1",
        "FLOWRUNS_RECONCILE_SLOTS_INTERVAL_SECONDS": "1",
    }
    command = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel", "INFO",
               "--schedule", str(tmp_path / "celerybeat-schedule")]
    with (tmp_path / "beat.log").open("wb") as output:
        beat = subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            state = worker.call("flow_runs.read_flow_run", flow_run_id=run["id"])["state"]
            log = worker.log_text()
            if state["name"] == "Late" and "maintenance.reconcile_concurrency_slots[" in log:
                break
            time.sleep(0.5)
        assert state["name"] == "Late", (tmp_path / "beat.log").read_text()
        assert "maintenance.reconcile_concurrency_slots[" in worker.log_text()
        checked = subprocess.run([sys.executable, "-m", "tasks.cli", "check"], cwd=REPOSITORY,
                                 env={**env, "FLOWRUNS_DATABASE_URL": database_url}, capture_output=True,
                                 text=True, timeout=60, check=False)
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert [line.split()[:2] for line in checked.stdout.splitlines()] == [
            ["database", "ok"], ["schema", "ok"], ["broker", "ok"], ["worker", "ok"], ["beat", "ok"]]
    finally:
        stop_process(beat)
    with get_engine(database_url).begin() as connection:  # beat as if it had stopped a minute ago
        connection.execute(sa.update(orm.MaintenanceRun).values(last_run=now_utc() - datetime.timedelta(minutes=1)))
    stale = subprocess.run([sys.executable, "-m", "tasks.cli", "check", "--only", "beat,worker"], cwd=REPOSITORY,
                           env={**env, "FLOWRUNS_DATABASE_URL": database_url, "FLOWRUNS_TASK_QUEUE": "nobody"},
                           capture_output=True, text=True, timeout=60, check=False)
    assert stale.returncode == 1
    assert [line.split()[:2] for line in stale.stdout.splitlines()] == [["beat", "FAIL"], ["worker", "FAIL"]]


def test_unacknowledged_messages_are_swept_about_as_often_as_the_visibility_timeout() -> None:
    from models.settings import Settings
    from tasks.worker_app import celery_config

    options = celery_config(Settings(visibility_timeout=5, broker_url="redis://b/0"))["broker_transport_options"]
    assert options["visibility_timeout"] == 5
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 5


def test_redis_only_options_are_given_to_redis_only() -> None:
    on_rabbitmq = create_app(Settings(broker_url="amqp://guest:guest@rabbit:5672//", result_backend="redis://r/1")).conf
    assert "visibility_timeout" not in on_rabbitmq.broker_transport_options
    assert on_rabbitmq.broker_transport_options["confirm_publish"] is True
    assert on_rabbitmq.result_backend_transport_options["visibility_timeout"] == Settings().visibility_timeout
    assert on_rabbitmq.get("visibility_timeout") is None
    queue = next(q for q in on_rabbitmq.task_queues if q.name == "flowruns")
    assert queue.queue_arguments["x-queue-type"] == "quorum" and queue.exchange.type == "topic"

    on_redis = create_app(Settings(broker_url="redis://b/3", result_backend="redis://r/4")).conf
    assert all(not q.queue_arguments for q in on_redis.task_queues)
    assert "confirm_publish" not in on_redis.broker_transport_options


def test_the_amqp_heartbeat_is_configurable_and_left_to_rabbitmq_only() -> None:
    rabbit = Settings(broker_url="amqp://rabbit//", result_backend="redis://r/1", broker_heartbeat_seconds=4)
    assert create_app(rabbit).conf.broker_heartbeat == 4
    assert create_app(Settings(broker_url="amqp://rabbit//", result_backend="redis://r/1")).conf.broker_heartbeat == 120
    assert "broker_heartbeat" not in celery_config(Settings(broker_url="redis://b/3", broker_heartbeat_seconds=4))
    with pytest.raises(ValueError, match="broker_heartbeat_seconds"):
        Settings(broker_heartbeat_seconds=-1)


def test_retry_countdowns_on_rabbitmq_are_whole_seconds_of_at_least_one() -> None:
    from tasks.broker_topology import broker_countdown

    assert broker_countdown(0.1, "amqp://h//") == 1.0 and broker_countdown(2.2, "pyamqp://h//") == 3.0
    assert broker_countdown(0.1, "redis://h/0") == 0.1


def test_a_message_published_while_the_broker_restarts_waits_for_it(tmp_path: Path) -> None:
    """A follow-up or a retry sent on the worker's connection while the broker restarts is
    published once the broker is back, instead of failing after Celery's default second of
    retries (which turns a retry into Reject without requeue, a FAILURE for a committed request)."""
    import shutil
    import socket
    import threading

    import redis

    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(server):
        pytest.skip("needs redis-server")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(tmp_path)]
    started = [subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    settings = Settings(broker_url=f"redis://127.0.0.1:{port}/0", result_backend=f"redis://127.0.0.1:{port}/1")
    app = create_app(settings)

    def restart_later() -> None:
        time.sleep(3.0)
        started.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    try:
        for _ in range(50):
            try:
                redis.Redis(port=port).ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)
        app.send_task("flows.create_flow", kwargs={"flow": {"name": "before"}}, task_id="published-before")
        started[0].terminate()
        started[0].wait(timeout=10)
        restarter = threading.Thread(target=restart_later)
        restarter.start()
        began = time.monotonic()
        app.send_task("flows.create_flow", kwargs={"flow": {"name": "late"}}, task_id="published-late")
        waited = time.monotonic() - began
        restarter.join()
        assert waited >= 2.5
        assert redis.Redis(port=port).llen(settings.task_queue) == 1  # the restarted broker kept nothing else
    finally:
        app.close()
        for process in started:
            process.terminate()
            process.wait(timeout=10)
