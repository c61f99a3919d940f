"""RabbitMQ for the tests: a virtual host of the test's own on the local node, deleted afterwards.

Tests that need RabbitMQ skip when it does not answer at 127.0.0.1:5672, unless
FLOWRUNS_TEST_REQUIRE_RABBITMQ=1 (CI sets it), which makes a missing RabbitMQ a failure.
"""

import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
import contextlib
from contextlib import contextmanager
from typing import Any

import pytest
from kombu import Connection

from flowruns_tools.chaos.rabbitmq import rabbitmq_vhost as chaos_rabbitmq_vhost
from flowruns_tools.chaos.rabbitmq import rabbitmqctl

RABBITMQ_URL = os.environ.get("FLOWRUNS_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


def _unavailable() -> str | None:
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl not on PATH"
    try:
        with Connection(f"{RABBITMQ_URL}/", connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1)
    except Exception as error:  # noqa: BLE001 - any failure to connect means: no RabbitMQ here
        return f"no RabbitMQ at {RABBITMQ_URL}: {error}"
    return None


def require_rabbitmq() -> None:
    """Skip the test when RabbitMQ does not answer (fail it instead where it must: CI)."""
    if (reason := _unavailable()) is not None:
        if os.environ.get("FLOWRUNS_TEST_REQUIRE_RABBITMQ") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """The broker URL of a fresh vhost (queues, exchanges and messages of its own), deleted afterwards."""
    require_rabbitmq()
    with chaos_rabbitmq_vhost(RABBITMQ_URL) as url:
        yield url


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


def settled_ready_count(url: str, queue: str, expected: int, timeout: float = 20.0) -> int:
    """The queue's count of ready messages once it shows `expected`, or the last count seen after
    `timeout`. A quorum queue's counts are published on a timer (every few seconds), so a message
    consumed or parked a moment ago can still be listed as ready."""
    deadline = time.monotonic() + timeout
    while (ready := list_queues(url)[queue]["messages_ready"]) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return int(ready)


def list_exchanges(url: str) -> dict[str, str]:
    """The vhost's exchanges by name, with their type."""
    output = rabbitmqctl("list_exchanges", "-p", vhost_of(url), "--formatter", "json",
                         "name", "type")
    return {exchange["name"]: exchange["type"] for exchange in json.loads(output)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def forwarded_port(port: int, target: tuple[str, int]) -> Iterator[None]:
    """Connections to 127.0.0.1:`port` are passed on to `target` while this lasts (before it,
    the port refuses them: a broker that is away)."""
    server = socket.create_server(("127.0.0.1", port))
    server.settimeout(0.2)
    stop = threading.Event()

    def pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(target)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(source, sink), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield
    finally:
        stop.set()
        acceptor.join()
        server.close()
