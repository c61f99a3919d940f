"""flowruns on a Redis that another Celery app already uses: each side's workers take only their
own messages (flowruns consumes `flowruns` and `flowruns.maintenance`, never Celery's default
`celery`), and nothing is lost or refused as unregistered."""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery

from tests.celery_support import (
    REDIS_URL,
    REPOSITORY,
    RESULT_BACKEND,
    Worker,
    _redis_available,
    running_worker,
    stop_process,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]

SHARED_BROKER = f"{REDIS_URL}/11"
"""A Redis database of this test's own, shared by both apps (the default queue names are used)."""
REQUESTS = 30


@pytest.fixture
def unrelated_worker(tmp_path: Path) -> Iterator[tuple[Celery, Path]]:
    if not _redis_available(SHARED_BROKER):
        pytest.skip(f"no Redis at {REDIS_URL}")
    log = tmp_path / "unrelated.log"
    env = {**os.environ, "UNRELATED_BROKER_URL": SHARED_BROKER, "UNRELATED_RESULT_BACKEND": RESULT_BACKEND}
    command = [sys.executable, "-m", "celery", "-A", "tests.unrelated_app", "worker", "--loglevel", "INFO",
               "--concurrency", "1", "--hostname", f"unrelated-{os.getpid()}@%h", "--without-mingle",
               "--without-gossip"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=output, stderr=subprocess.STDOUT)
    producer = Celery("unrelated-producer", broker=SHARED_BROKER, backend=RESULT_BACKEND, set_as_current=False)
    try:
        yield producer, log
    finally:
        stop_process(process)
        producer.close()
        import redis

        client = redis.Redis.from_url(SHARED_BROKER)
        client.flushdb()
        client.close()


@pytest.fixture
def flowruns_worker(database_url: str, tmp_path: Path) -> Iterator[Worker]:
    with running_worker(database_url, tmp_path, queue="flowruns", broker_url=SHARED_BROKER) as handle:
        yield handle


def test_flowruns_and_another_celery_app_share_one_redis_database(
    flowruns_worker: Worker, unrelated_worker: tuple[Celery, Path]
) -> None:
    unrelated, unrelated_log = unrelated_worker
    theirs = [unrelated.send_task("unrelated.add", args=[index, 1]) for index in range(REQUESTS)]
    ours = [flowruns_worker.send("flow_runs.count_flow_runs", kwargs={}) for _ in range(REQUESTS)]

    assert [result.get(timeout=30) for result in theirs] == [index + 1 for index in range(REQUESTS)]
    assert [result.get(timeout=30) for result in ours] == [0] * REQUESTS
    time.sleep(0.5)
    for log in (flowruns_worker.log_text(), unrelated_log.read_text(errors="replace")):
        assert "unregistered task" not in log.lower()
    assert unrelated_log.read_text(errors="replace").count("unrelated.add[") >= REQUESTS
    assert "unrelated.add" not in flowruns_worker.log_text()
    inspect = flowruns_worker.producer.control.inspect(destination=[flowruns_worker.hostname], timeout=5)
    queues = {queue["name"] for queues in (inspect.active_queues() or {}).values() for queue in queues}
    assert queues == {"flowruns", "flowruns.maintenance"}
