"""RabbitMQ for the chaos scenarios: a vhost of the scenario's own on the configured node, or a
node of the scenario's own (its own name, ports, configuration and data directory) that the
broker-restart scenario stops and starts. Both are driven with `rabbitmqctl`."""

import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from flowruns_tools.chaos.services import ChaosSetupError

DEFAULT_RABBITMQ_URL = "amqp://127.0.0.1:5672"
"""No user in the URL: the AMQP client then logs in as RabbitMQ's local default user, `guest`."""
DEFAULT_RABBITMQ_PORT = 56720
SERVER_USER = "rabbitmq"
"""Debian's rabbitmq-server runs as this user (its wrapper switches to it when started by root)."""


def rabbitmqctl(*arguments: str, node: str | None = None, timeout: float = 60) -> str:
    if shutil.which("rabbitmqctl") is None:
        raise ChaosSetupError("rabbitmqctl not found on PATH")
    command = ["rabbitmqctl", *(["-n", node] if node else []), *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if completed.returncode != 0:
        raise ChaosSetupError(f"{' '.join(command)}: {(completed.stderr or completed.stdout).strip()[-500:]}")
    return completed.stdout


@contextlib.contextmanager
def rabbitmq_vhost(server_url: str = DEFAULT_RABBITMQ_URL, node: str | None = None) -> Iterator[str]:
    """The URL of a fresh vhost on the node (deleted afterwards, with everything in it)."""
    name = f"flowruns-chaos-{uuid.uuid4().hex[:10]}"
    user = urlsplit(server_url).username or "guest"
    rabbitmqctl("add_vhost", name, node=node)
    try:
        rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*", node=node)
        yield f"{server_url.rstrip('/')}/{name}"
    finally:
        with contextlib.suppress(ChaosSetupError, subprocess.TimeoutExpired):
            rabbitmqctl("delete_vhost", name, node=node)


def queue_backlog(url: str, queue: str, node: str | None = None) -> tuple[int, int]:
    """Messages of `queue` ready, and delivered but not acknowledged."""
    vhost = url.rsplit("/", 1)[1] or "/"
    output = rabbitmqctl("list_queues", "-p", vhost, "--formatter", "json", "name", "messages_ready",
                         "messages_unacknowledged", node=node, timeout=30)
    for row in json.loads(output):
        if row["name"] == queue:
            return int(row["messages_ready"]), int(row["messages_unacknowledged"])
    return 0, 0


class RabbitNode:
    """A RabbitMQ node of the scenario's own, on `port` of each `listen` address, its data kept across restarts."""

    def __init__(self, port: int, listen: tuple[str, ...] = ("127.0.0.1",)) -> None:
        if shutil.which("rabbitmq-server") is None:
            raise ChaosSetupError("rabbitmq-server not found on PATH")
        self.port = port
        self.name = f"flowruns-chaos-{uuid.uuid4().hex[:6]}@localhost"
        self.directory = Path(tempfile.mkdtemp(prefix="flowruns-chaos-rabbitmq-"))
        listeners = "".join(f"listeners.tcp.{index} = {address}:{port}\n" for index, address in enumerate(listen, 1))
        (self.directory / "rabbitmq.conf").write_text(f"{listeners}loopback_users = none\n")
        (self.directory / "enabled_plugins").write_text("[].\n")
        shutil.chown(self.directory, SERVER_USER, SERVER_USER)
        for path in self.directory.iterdir():
            shutil.chown(path, SERVER_USER, SERVER_USER)

    def url(self) -> str:
        return f"amqp://127.0.0.1:{self.port}//"  # as `guest`, which this node allows from anywhere

    def start(self) -> None:
        environment = {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 1),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.directory / "pid"),
        }
        assignments = " ".join(f"{name}={value}" for name, value in environment.items())
        script = f"cd /var/lib/rabbitmq && env {assignments} /usr/lib/rabbitmq/bin/rabbitmq-server -detached"
        subprocess.run(["su", SERVER_USER, "-s", "/bin/sh", "-c", script], check=False, timeout=60,
                       capture_output=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with contextlib.suppress(ChaosSetupError, subprocess.TimeoutExpired):
                rabbitmqctl("await_startup", "--timeout", "5", node=self.name, timeout=15)
                return
            time.sleep(0.5)
        raise ChaosSetupError(f"RabbitMQ node {self.name} did not start; logs in {self.directory / 'log'}")

    def stop(self) -> None:
        rabbitmqctl("stop", node=self.name, timeout=120)

    def close(self) -> None:
        with contextlib.suppress(ChaosSetupError, subprocess.TimeoutExpired):
            self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
