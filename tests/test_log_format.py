"""`FLOWRUNS_LOG_FORMAT=json`: a worker writes one JSON object per line, and every request it
finishes leaves a `flowruns.request` line naming the task, the run, the states and the outcome."""

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.log_format import JsonFormatter
from tests.celery_support import running_worker

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("db")]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_a_worker_logs_each_request_as_one_json_line(database_url: str, tmp_path: Path) -> None:
    with running_worker(database_url, tmp_path, log_format="json") as worker:
        flow = worker.call("flows.create_flow", flow={"name": "logged"})
        run = worker.call("flow_runs.create_flow_run", flow_run={"flow_id": flow["id"]})
        task_id = "0b7f5a52-3f0e-4d7e-8c55-6f1d2a9e4b11"
        outcome = worker.call("flow_runs.set_flow_run_state", task_id, flow_run_id=run["id"],
                              state={"type": "RUNNING"})
        assert outcome["status"] == "ACCEPT"
        worker.producer.AsyncResult(task_id).forget()  # so the copy's own answer is awaited
        worker.call("flow_runs.set_flow_run_state", task_id, flow_run_id=run["id"], state={"type": "RUNNING"})
    text = worker.log_text()  # once the worker stopped: every process has written its lines

    lines = json_lines(text)
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    requests = [line for line in lines if line.get("event") == "flowruns.request" and line["task_id"] == task_id]
    first, replay = requests
    assert first["task"] == "flow_runs.set_flow_run_state"
    assert first["run_id"] == run["id"]
    assert (first["proposed"], first["outcome"], first["resulting"], first["resulting_name"]) == (
        "RUNNING", "ACCEPT", "RUNNING", "Running")
    assert first["replayed"] is False and replay["replayed"] is True
    assert first["retries"] == 0 and first["duration_ms"] > 0
    # Celery's own lines are JSON too, their text in `message`.
    assert any("ready" in line["message"] for line in lines if line["logger"].startswith("celery"))


def test_attached_fields_and_errors_are_kept() -> None:
    logger = logging.getLogger("flowruns.test")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord("flowruns.test", logging.ERROR, __file__, 1, "failed %s", ("x",),
                                   exc_info=sys.exc_info(), extra={"cause": "LockNotAvailable"})
    document = json.loads(JsonFormatter().format(record))
    assert document["message"] == "failed x"
    assert document["cause"] == "LockNotAvailable"
    assert document["level"] == "ERROR"
    assert "ValueError: boom" in document["error"]
