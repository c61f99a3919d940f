"""The partition scenario's network: worker hosts in namespaces of their own that reach the
scenario's services over their own link only, links that can be cut and healed, and nothing left
behind, whether the harness ends, is interrupted by SIGTERM, or was killed outright before."""

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from flowruns_tools.chaos.netns import Network, on_host, reachable, remove_stale, worker_hosts

pytestmark = [
    pytest.mark.postgres_only,  # needs no database: run once, not again on SQLite
    pytest.mark.skipif(shutil.which("ip") is None, reason="no `ip` command"),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]


def namespaces() -> set[str]:
    return {line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                                        check=True).stdout.splitlines() if line.strip()}


def links() -> set[str]:
    return {line.split()[0].split("@")[0] for line in subprocess.run(
        ["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout.splitlines()}


@contextmanager
def listener(address: str) -> Iterator[int]:
    with socket.socket() as server:
        server.bind((address, 0))
        server.listen()
        yield server.getsockname()[1]


def test_hosts_reach_the_bridge_only_and_a_cut_link_blocks_one_host_until_healed() -> None:
    with worker_hosts(2) as network:
        first, second = network.hosts
        assert {first.namespace, second.namespace} <= namespaces()
        with listener(network.gateway) as port, listener("127.0.0.1") as loopback_port:
            assert reachable(first, network.gateway, port) and reachable(second, network.gateway, port)
            assert not reachable(first, "127.0.0.1", loopback_port)  # its own loopback, not the machine's
            network.cut(first)
            assert not reachable(first, network.gateway, port, timeout=0.5)
            assert reachable(second, network.gateway, port)
            network.heal(first)
            assert reachable(first, network.gateway, port)
    assert not {first.namespace, second.namespace} & namespaces()
    assert not {network.bridge, first.link, second.link} & links()


def test_what_a_killed_run_left_behind_is_removed_by_the_next() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    leftover = Network(1, owner=gone.pid)
    leftover.create()
    assert leftover.hosts[0].namespace in namespaces()
    assert set(remove_stale()) >= {leftover.hosts[0].namespace, leftover.bridge}
    assert leftover.hosts[0].namespace not in namespaces() and leftover.bridge not in links()


def test_sigterm_removes_the_namespaces() -> None:
    program = ("import time\nfrom flowruns_tools.chaos.netns import worker_hosts\n"
               "with worker_hosts(2) as network:\n"
               "    print(network.hosts[0].namespace, network.hosts[1].namespace, flush=True)\n"
               "    time.sleep(120)\n")
    harness = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert harness.stdout is not None
        made = set(harness.stdout.readline().split())
        assert len(made) == 2 and made <= namespaces()
        harness.send_signal(signal.SIGTERM)
        harness.wait(timeout=30)
    finally:
        harness.kill()
    assert not made & namespaces()


def test_urls_are_pointed_at_another_host_with_everything_else_kept() -> None:
    assert on_host("postgresql+psycopg://postgres@127.0.0.1:5555/db", "10.213.7.1") == \
        "postgresql+psycopg://postgres@10.213.7.1:5555/db"
    assert on_host("amqp://guest:secret@127.0.0.1:56720//vhost", "10.213.7.1") == \
        "amqp://guest:secret@10.213.7.1:56720//vhost"
    assert on_host("redis://127.0.0.1/1", "h") == "redis://h/1"
