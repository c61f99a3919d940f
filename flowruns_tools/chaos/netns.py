"""Worker hosts for the partition scenario: one network namespace per host, each joined by a veth pair
to a bridge of the scenario's own in the root namespace, on a private /24 that nothing else on the
machine routes. The bridge has no uplink and the namespaces no default route: a host reaches the
scenario's services on the bridge address and nothing else. Cutting a host unplugs its veth from the
bridge side (`ip link set ... down`); healing plugs it back.

Every name carries the harness's pid, so a later run removes what a killed one left behind."""

import contextlib
import ipaddress
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from flowruns_tools.chaos.services import ChaosSetupError

SUBNETS = ipaddress.ip_network("10.213.0.0/16")
"""The /24 of a scenario is picked in here, clear of every address and route the machine has."""
NAMESPACE_PREFIX = "flowruns-chaos-"
LINK_PREFIX = "frc"
"""Interface names are at most 15 characters: `frc<pid>b` (bridge), `frc<pid>v<n>` (root side of host
n's veth), `frc<pid>p<n>` (its peer, inside the host's namespace)."""


def ip(*arguments: str, check: bool = True) -> str:
    completed = subprocess.run(["ip", *arguments], capture_output=True, text=True, timeout=30, check=False)
    if check and completed.returncode != 0:
        raise ChaosSetupError(f"ip {' '.join(arguments)}: {completed.stderr.strip()}")
    return completed.stdout


@dataclass(frozen=True)
class Host:
    """One worker host: its namespace, its address, and the root-side end of its link."""

    index: int
    namespace: str
    address: str
    link: str

    def exec_prefix(self) -> list[str]:
        """Run a command inside the host (`ip netns exec` execs it: the pid is the command's own)."""
        return ["ip", "netns", "exec", self.namespace]


class Network:
    """The bridge, the subnet and the hosts of one scenario; `close()` removes all of it."""

    def __init__(self, hosts: int, owner: int | None = None) -> None:
        """`owner`: the pid the names carry (this process's by default)."""
        self.tag = f"{owner or os.getpid()}"
        self.bridge = f"{LINK_PREFIX}{self.tag}b"
        self.subnet = free_subnet()
        addresses = list(self.subnet.hosts())
        self.gateway = str(addresses[0])
        """The root namespace's address on the bridge: where the hosts find PostgreSQL and the broker."""
        self.hosts = [Host(index, f"{NAMESPACE_PREFIX}{self.tag}-h{index}", str(addresses[9 + index]),
                           f"{LINK_PREFIX}{self.tag}v{index}") for index in range(1, hosts + 1)]

    def create(self) -> None:
        if os.geteuid() != 0:
            raise ChaosSetupError("network namespaces and veth pairs need root")
        remove_stale()
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for host in self.hosts:
                peer = f"{LINK_PREFIX}{self.tag}p{host.index}"
                ip("netns", "add", host.namespace)
                ip("link", "add", host.link, "type", "veth", "peer", "name", peer)
                ip("link", "set", peer, "netns", host.namespace)
                ip("link", "set", host.link, "master", self.bridge, "up")
                ip("-n", host.namespace, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", peer)
                ip("-n", host.namespace, "link", "set", peer, "up")
                ip("-n", host.namespace, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def cut(self, host: Host) -> None:
        ip("link", "set", host.link, "down")

    def heal(self, host: Host) -> None:
        ip("link", "set", host.link, "up")

    def close(self) -> None:
        """Namespaces first (each takes its veth pair with it), then the bridge. Idempotent."""
        for host in self.hosts:
            ip("netns", "delete", host.namespace, check=False)
            ip("link", "delete", host.link, check=False)
        ip("link", "delete", self.bridge, check=False)


@contextlib.contextmanager
def worker_hosts(hosts: int) -> Iterator[Network]:
    """`hosts` worker hosts on a network of their own for the duration of the block (what earlier runs
    killed outright left behind is removed first). SIGTERM unwinds the block as Ctrl-C does, so the
    namespaces go either way, with everything the block started inside them."""
    with _sigterm_unwinds():
        network = Network(hosts)
        network.create()
        try:
            yield network
        finally:
            network.close()


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt("SIGTERM")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def free_subnet() -> ipaddress.IPv4Network:
    """A /24 of SUBNETS that overlaps no address or route of the machine (any table)."""
    taken: list[ipaddress.IPv4Network] = []
    for entry in json.loads(ip("-j", "-4", "addr") or "[]"):
        for info in entry.get("addr_info", []):
            taken.append(ipaddress.ip_network(f"{info['local']}/{info['prefixlen']}", strict=False))
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        destination = route.get("dst", "")
        if destination and destination != "default" and re.match(r"^[\d./]+$", destination):
            taken.append(ipaddress.ip_network(destination, strict=False))
    for candidate in SUBNETS.subnets(new_prefix=24):
        if not any(candidate.overlaps(network) for network in taken):
            return candidate
    raise ChaosSetupError(f"no free /24 in {SUBNETS}")  # pragma: no cover


def remove_stale() -> list[str]:
    """Remove the namespaces and links of harness processes that are gone (killed before they could
    clean up); what was removed."""
    removed = []
    for line in ip("netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        if (match := re.fullmatch(rf"{NAMESPACE_PREFIX}(\d+)-h\d+", name)) and not _alive(int(match[1])):
            ip("netns", "delete", name, check=False)
            removed.append(name)
    for entry in json.loads(ip("-j", "link") or "[]"):
        name = entry.get("ifname", "")
        if (match := re.fullmatch(rf"{LINK_PREFIX}(\d+)[bv]\d*", name)) and not _alive(int(match[1])):
            ip("link", "delete", name, check=False)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def on_host(url: str, host: str) -> str:
    """`url` with its host replaced (user, password, port, path and query kept)."""
    parts = urlsplit(url)
    if parts.hostname is None:
        return url
    credentials = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{credentials}{host}{port}"))


def reachable(host: Host, address: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection from inside `host` to address:port succeeds."""
    probe = (f"import socket; socket.create_connection(({address!r}, {port}), timeout={timeout}).close()")
    completed = subprocess.run([*host.exec_prefix(), "python3", "-c", probe], capture_output=True,
                               timeout=timeout + 30, check=False)
    return completed.returncode == 0

