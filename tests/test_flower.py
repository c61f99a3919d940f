"""Flower (`celery -A tasks flower`) shows every contract task by name, with its kwargs and state.

Flower runs next to the session's test worker, on the same broker and queue, its API opened with
FLOWER_UNAUTHENTICATED_API=true (Flower keeps the API closed when no authentication is configured).
"""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flowruns_tools.chaos import free_port
from tests.celery_support import BROKER_URL, REPOSITORY, RESULT_BACKEND, Worker, new_id, stop_process, worker  # noqa: F401

pytest.importorskip("flower", reason="flower is not installed (pip install 'flowruns[monitor]')")

pytestmark = [pytest.mark.integration, pytest.mark.postgres_only]

START_SECONDS = 45.0
SEEN_SECONDS = 45.0
"""Bounded waits: Flower must be up, and the task visible, within these."""


def start_flower(worker: Worker, log: Path, *, open_api: bool) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port(0)
    env = {
        **os.environ,
        "FLOWRUNS_BROKER_URL": BROKER_URL,
        "FLOWRUNS_RESULT_BACKEND": RESULT_BACKEND,
        "FLOWRUNS_TASK_QUEUE": worker.queue,
    }
    env.pop("FLOWER_UNAUTHENTICATED_API", None)
    if open_api:
        env["FLOWER_UNAUTHENTICATED_API"] = "true"
    command = [sys.executable, "-m", "celery", "-A", "tasks", "flower", f"--port={port}", "--address=127.0.0.1"]
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=REPOSITORY, env=env, stdout=output, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower exited:\n{log.read_text(errors='replace')}")
        try:
            if get(base, "/healthcheck")[0] == 200:
                return process, base
        except OSError:
            pass
        time.sleep(0.2)
    stop_process(process)
    raise RuntimeError(f"flower did not start:\n{log.read_text(errors='replace')}")


def get(base: str, path: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as response:
            body = response.read().decode()
            return response.status, json.loads(body) if body and body[0] in "[{" else body
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


@pytest.fixture(scope="module")
def flower(worker: Worker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, base = start_flower(worker, tmp_path_factory.mktemp("flower") / "flower.log", open_api=True)
    try:
        yield base
    finally:
        stop_process(process)


def seen_whole(info: Any) -> bool:
    return isinstance(info, dict) and info.get("state") == "SUCCESS" and bool(info.get("name"))


@pytest.mark.usefixtures("db")
def test_flower_shows_a_contract_task_by_name_with_its_kwargs_and_state(flower: str, worker: Worker) -> None:
    flow_name = f"flower-{uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + SEEN_SECONDS
    info: Any = None
    task_id = ""
    # Flower knows only the events it received: until its event consumer is up, a task can pass unseen
    # (or half seen: its success without its receipt), so a new request (same flow, a new task id) is
    # sent until one is seen whole.
    while time.monotonic() < deadline and not seen_whole(info):
        task_id = new_id()
        worker.call("flows.create_flow", task_id, flow={"name": flow_name})
        seen_by = time.monotonic() + 3
        while time.monotonic() < min(seen_by, deadline):
            status, info = get(flower, f"/api/task/info/{task_id}")
            if status == 200 and seen_whole(info):
                break
            time.sleep(0.2)
    assert seen_whole(info), f"not seen by Flower: {info!r}"
    assert info["name"] == "flows.create_flow"
    assert info["uuid"] == task_id
    assert flow_name in info["kwargs"] and "'flow'" in info["kwargs"]
    assert info["worker"] == worker.hostname

    status, listed = get(flower, "/api/tasks?taskname=flows.create_flow&limit=1000")
    assert status == 200
    assert listed[task_id]["name"] == "flows.create_flow" and listed[task_id]["state"] == "SUCCESS"
    assert flow_name in listed[task_id]["kwargs"]


def test_flower_lists_every_contract_task_registered_on_the_worker(flower: str, worker: Worker) -> None:
    from tests.test_celery_config import CONTRACT_TASKS

    deadline = time.monotonic() + SEEN_SECONDS
    registered: set[str] = set()
    while time.monotonic() < deadline and not CONTRACT_TASKS <= registered:
        status, body = get(flower, f"/api/workers?refresh=1&workername={worker.hostname}")
        if status == 200 and isinstance(body, dict):
            registered = set(body.get(worker.hostname, {}).get("registered", []))
        time.sleep(0.5)
    assert CONTRACT_TASKS <= registered


def test_flower_api_is_closed_without_authentication(worker: Worker, tmp_path: Path) -> None:
    process, base = start_flower(worker, tmp_path / "flower-closed.log", open_api=False)
    try:
        status, _body = get(base, "/api/tasks")
        assert status == 401
        assert get(base, "/healthcheck")[0] == 200
    finally:
        stop_process(process)
