"""Security: the worker accepts JSON only, and credentials come from the settings (the environment)
and never appear in logs, command output or task results.

A pickle message is refused and does nothing: that is proved by
`tests/test_celery_config.py::test_a_pickle_message_is_refused_and_does_nothing` (a message whose
unpickling would create a file); here, another non-JSON content type and the credentials.
"""

import ast
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy.engine import make_url

from flowruns_tools.chaos import RedisServer, WorkerProcess, free_port, worker_env
from tests.celery_support import REPOSITORY, RESULT_SECONDS, Worker, new_id, row_counts, worker  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.postgres_only]

DATABASE_SECRET = f"db-secret-{uuid.uuid4().hex[:12]}"
REDIS_SECRET = f"redis-secret-{uuid.uuid4().hex[:12]}"
SOURCE_PACKAGES = ("models", "orchestration", "tasks", "flowruns_tools")


# ------------------------------------------------------------------------------- JSON only


@pytest.mark.usefixtures("db")
def test_a_yaml_message_is_refused_and_does_nothing(worker: Worker) -> None:
    pytest.importorskip("yaml")
    sender = Celery("yaml-sender", broker=worker.producer.conf.broker_url, backend=worker.producer.conf.result_backend,
                    set_as_current=False)
    sender.conf.update(task_serializer="yaml", accept_content=["yaml", "json"], task_default_queue=worker.queue)
    flow_name = f"yaml-{uuid.uuid4().hex[:8]}"
    before = row_counts()
    sent = sender.send_task("flows.create_flow", kwargs={"flow": {"name": flow_name}}, task_id=new_id(),
                            serializer="yaml")
    assert isinstance(worker.call("flow_runs.count_flow_runs"), int)  # sent after it: the yaml one was consumed
    time.sleep(1)
    assert worker.results.get(f"celery-task-meta-{sent.id}") is None
    assert row_counts() == before
    assert "Refusing to deserialize untrusted content of type yaml" in worker.log_text()
    assert worker.process.poll() is None
    sender.close()


# ----------------------------------------------------------------------------- credentials


@pytest.fixture(scope="module")
def guarded_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own that requires a password."""
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary")
    server = RedisServer(free_port(0), password=REDIS_SECRET)
    server.start()
    try:
        yield server
    finally:
        server.close()


def with_password(database_url: str) -> str:
    """The test database's URL with a password (trust authentication ignores it; it must not leak anyway)."""
    return make_url(database_url).set(password=DATABASE_SECRET).render_as_string(hide_password=False)


def test_the_guarded_redis_really_requires_its_password(guarded_redis: RedisServer) -> None:
    client = redis.Redis(host="127.0.0.1", port=guarded_redis.port, socket_connect_timeout=2)
    with pytest.raises(redis.exceptions.AuthenticationError):
        client.ping()
    client.close()
    assert guarded_redis.client().ping()


@pytest.mark.usefixtures("db")  # it creates a run: the database is emptied afterwards
def test_credentials_never_reach_logs_results_or_command_output(
    database_url: str, guarded_redis: RedisServer, tmp_path: Path
) -> None:
    secret_url = with_password(database_url)
    outputs = [flowruns_command(["db", "upgrade"], secret_url), flowruns_command(["db", "current"], secret_url)]
    assert "***" in outputs[0], "the upgrade names the database with its password hidden"

    broker, backend = guarded_redis.url(0), guarded_redis.url(1)
    queue = f"flowruns-secure-{uuid.uuid4().hex[:8]}"
    retries = {"task_max_retries": 1, "task_retry_backoff_max_seconds": 1}
    serving = WorkerProcess(worker_env(secret_url, broker, backend, queue, **retries), tmp_path, "secure")
    unreachable = "postgresql+psycopg://postgres:" + DATABASE_SECRET + "@127.0.0.1:1/nowhere"
    broken_queue = f"{queue}-broken"
    broken = WorkerProcess(worker_env(unreachable, broker, backend, broken_queue, **retries), tmp_path, "broken")
    producer = Celery("foreign-producer", broker=broker, backend=backend, set_as_current=False)
    seen: list[Any] = []
    try:
        serving.start()
        broken.start()
        serving.wait_for_children()
        broken.wait_for_children()
        flow = outcome(producer, queue, "flows.create_flow", {"flow": {"name": "secure"}})
        assert flow["status"] == "SUCCESS", flow
        run = outcome(producer, queue, "flow_runs.create_flow_run", {"flow_run": {"flow_id": flow["result"]["id"]}})
        seen += [flow, run]
        failures = [
            outcome(producer, queue, "flow_runs.read_flow_run", {"flow_run_id": str(uuid.uuid4())}),
            outcome(producer, queue, "flow_runs.set_flow_run_state",
                    {"flow_run_id": run["result"]["id"], "state": {"type": "DONE"}, "token": "value-never-echoed"}),
            outcome(producer, broken_queue, "flow_runs.read_flow_run", {"flow_run_id": str(uuid.uuid4())}),
        ]
        assert [f["result"]["exc_type"] for f in failures] == ["ObjectNotFoundError", "ValidationError",
                                                               "OperationalError"]
        seen += failures
        assert "value-never-echoed" not in json.dumps(failures[1]["result"]), "errors name fields, not values"
        inspect = producer.control.inspect(timeout=5)
        configuration = inspect.conf() or {}
        assert configuration, "both workers answer `inspect conf`"
        seen.append(configuration)
    finally:
        serving.stop()
        broken.stop()
        producer.close()
    logs = serving.log_text() + broken.log_text()
    assert "lost a connection" in logs, "the unreachable database's failure was logged"
    assert ":**@127.0.0.1" in logs, "the worker names its broker with the password masked"
    stored = everything_in(guarded_redis)
    for text in [*outputs, logs, json.dumps(seen), *stored]:
        assert DATABASE_SECRET not in text
        assert REDIS_SECRET not in text


def flowruns_command(arguments: list[str], database_url: str) -> str:
    env = worker_env(database_url, "memory://", "cache+memory://", "celery")
    completed = subprocess.run([sys.executable, "-m", "tasks.cli", *arguments], cwd=REPOSITORY, env=env,
                               capture_output=True, text=True, timeout=120, check=False)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout + completed.stderr


def outcome(producer: Celery, queue: str, name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The raw stored result of one request (what any producer reads)."""
    result = producer.send_task(name, kwargs=kwargs, task_id=new_id(), queue=queue)
    result.get(timeout=RESULT_SECONDS, propagate=False)
    client = producer.backend.client
    return json.loads(client.get(f"celery-task-meta-{result.id}"))  # type: ignore[no-any-return]


def everything_in(server: RedisServer) -> list[str]:
    """Every value in every database of the server, as text."""
    texts = []
    for db in range(16):
        client = redis.Redis(host="127.0.0.1", port=server.port, password=server.password, db=db)
        for key in client.scan_iter(count=1000):
            kind = client.type(key).decode()
            if kind == "string":
                value: Any = client.get(key)
            elif kind == "hash":
                value = client.hgetall(key)
            elif kind == "list":
                value = client.lrange(key, 0, -1)
            elif kind == "set":
                value = client.smembers(key)
            elif kind == "zset":
                value = client.zrange(key, 0, -1)
            else:
                continue
            texts.append(f"{key!r} {value!r}")
        client.close()
    return texts


# ------------------------------------------------------------------------ one settings object


def environment_reads(path: Path) -> list[str]:
    """`os.getenv(...)`, `os.environ.get(...)` and `os.environ[...]` reads in a module (copying the whole
    environment for a subprocess singles out no credential and is allowed)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            target = ast.unparse(node.func)
            if target in ("os.getenv", "os.environ.get", "environ.get", "getenv"):
                found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and \
                ast.unparse(node.value) in ("os.environ", "environ"):
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_settings_object_reads_the_environment() -> None:
    sources = [path for package in SOURCE_PACKAGES for path in sorted((REPOSITORY / package).rglob("*.py"))]
    assert sources
    settings_module = REPOSITORY / "models" / "settings.py"
    reads = [read for path in sources if path != settings_module for read in environment_reads(path)]
    assert reads == []
    from models.settings import Settings

    assert Settings.model_config["env_prefix"] == "FLOWRUNS_"


def test_no_source_file_carries_a_credential() -> None:
    import re

    pattern = re.compile(r"[a-z+]+://[^/\s:@'\"]+:[^@\s/'\"{}]+@")
    offenders = [
        f"{path}:{number}: {line.strip()}"
        for package in SOURCE_PACKAGES
        for path in sorted((REPOSITORY / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
