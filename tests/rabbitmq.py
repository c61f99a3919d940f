"""RabbitMQ for the tests: a virtual host of the test's own on the local node, deleted afterwards.

Tests that need RabbitMQ skip when it does not answer at 127.0.0.1:5672, unless
FLOWRUNS_TEST_REQUIRE_RABBITMQ=1 (CI sets it), which makes a missing RabbitMQ a failure.
"""

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kombu import Connection

RABBITMQ_URL = os.environ.get("FLOWRUNS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


def rabbitmqctl(*arguments: str) -> str:
    completed = subprocess.run(["rabbitmqctl", *arguments], capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(arguments)}: {completed.stderr or completed.stdout}")
    return completed.stdout


def _unavailable() -> str | None:
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl not on PATH"
    try:
        with Connection(f"{RABBITMQ_URL}/", connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as error:  # noqa: BLE001 - any failure to connect means: no RabbitMQ here
        return f"no RabbitMQ at {RABBITMQ_URL}: {error}"
    return None


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """The broker URL of a fresh virtual host (queues, exchanges and messages of its own)."""
    if (reason := _unavailable()) is not None:
        if os.environ.get("FLOWRUNS_TEST_REQUIRE_RABBITMQ") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"flowruns-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"{RABBITMQ_URL}/{name}"
    finally:
        rabbitmqctl("delete_vhost", name)


def vhost_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def list_queues(url: str) -> dict[str, dict[str, Any]]:
    """The vhost's queues by name: type, arguments, messages ready and unacknowledged."""
    output = rabbitmqctl("list_queues", "-p", vhost_of(url), "--formatter", "json",
                         "name", "type", "arguments", "messages_ready", "messages_unacknowledged")
    queues = {queue["name"]: queue for queue in json.loads(output)}
    for queue in queues.values():  # rabbitmqctl lists arguments as [name, type, value]
        queue["arguments"] = {name: value for name, _type, value in queue["arguments"]}
    return queues


def list_exchanges(url: str) -> dict[str, str]:
    """The vhost's exchanges by name, with their type."""
    output = rabbitmqctl("list_exchanges", "-p", vhost_of(url), "--formatter", "json",
                         "name", "type")
    return {exchange["name"]: exchange["type"] for exchange in json.loads(output)}
