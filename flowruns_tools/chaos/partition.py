"""Several worker hosts and a network partition.

Three workers, each in a network namespace of its own (`netns`), reach the scenario's own PostgreSQL
cluster, broker (a redis-server, or a RabbitMQ node) and result Redis over their own link only; the
producer and the checks reach the same services on 127.0.0.1. During the batch, one host's link is
cut for longer than the visibility timeout (Redis) or two heartbeats (RabbitMQ), so its messages go
to other hosts while it still holds them, possibly mid-transaction; a few seconds into the cut,
another host's worker is SIGKILLed and restarted; the third keeps working throughout. Then the link
is healed and the cut-off worker finishes what it was doing. The checks are the other scenarios':
every request's outcome is the one recorded, nothing lost, nothing applied twice, no slot drift.

Namespaces, veth pairs and the bridge are removed on the way out, on SIGINT and SIGTERM too; a run
killed outright leaves them to the next run, which removes them first (`netns.worker_hosts`)."""

import contextlib
import datetime
import os
import random
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from flowruns_tools.chaos.checks import ScenarioResult, delivery_counts
from flowruns_tools.chaos.netns import Host, Network, on_host, reachable, worker_hosts
from flowruns_tools.chaos.rabbitmq import RabbitNode
from flowruns_tools.chaos.scenarios import (
    VISIBILITY_TIMEOUT_SECONDS,
    Options,
    World,
    _lifecycles,
    run_batch,
    world,
)
from flowruns_tools.chaos.services import (
    WORKER_PROCESSES,
    WORKER_START_SECONDS,
    ChaosSetupError,
    PostgresCluster,
    RedisServer,
    WorkerGroup,
    WorkerProcess,
    find_pg_bindir,
    free_port,
)

HOSTS = 3
HEARTBEAT_SECONDS = 4
"""The workers' AMQP heartbeat: RabbitMQ gives up on a silent connection after about two of these."""
CUT_SECONDS = {True: 15.0, False: 25.0}
"""How long a link stays cut (short form, full form): three visibility timeouts, four heartbeats."""
KILL_AFTER_SECONDS = 3.0
"""How far into the cut another host's worker is SIGKILLed: for a while only one host works."""
RUNS = {True: 1200, False: 4000}
"""Runs per batch (short form, full form): enough that the batch outlasts its faults by far."""
PORT_OFFSET = 7
"""The scenario's own services sit a few ports above the other scenarios' defaults."""


def partition(options: Options) -> ScenarioResult:
    result = ScenarioResult("partition")
    if os.geteuid() != 0 or shutil.which("ip") is None:
        result.skipped = "needs root and `ip` (iproute2) to make network namespaces"
        return result
    rng = random.Random(options.seed + 5)
    with contextlib.ExitStack() as stack:
        network = stack.enter_context(worker_hosts(HOSTS))
        listen = ("127.0.0.1", network.gateway)
        cluster = PostgresCluster(find_pg_bindir(options.pg_bindir), free_port(options.pg_port + PORT_OFFSET),
                                  listen=listen, trusted=(str(network.subnet),))
        stack.callback(cluster.close)
        cluster.start()
        redis_server = RedisServer(free_port(options.redis_port + PORT_OFFSET), bind=listen)
        stack.callback(redis_server.close)
        redis_server.start()
        broker_url, node_name = redis_server.url(0), None
        if options.broker == "rabbitmq":
            node = RabbitNode(free_port(options.rabbitmq_port + PORT_OFFSET), listen=listen)
            stack.callback(node.close)
            node.start()
            broker_url, node_name = node.url(), node.name
        _check_isolation(network, cluster.port)
        scenario = stack.enter_context(world(
            options, "partition", database_server=cluster.url(), broker_url=broker_url, rabbitmq_node=node_name,
            result_backend=redis_server.url(1), hosts=_hosts(network, options),
            worker_settings={"broker_heartbeat_seconds": HEARTBEAT_SECONDS}))
        scenario.start_worker()
        workload = _lifecycles(options, scenario, rng, runs=RUNS[options.short])
        seconds = CUT_SECONDS[options.short]
        rounds = [Round(network, scenario, cut=0, kill=1, seconds=seconds, probe_port=cluster.port)]
        if not options.short:
            rounds.append(Round(network, scenario, cut=1, kill=2, seconds=seconds, probe_port=cluster.port))
        run_batch(scenario, workload, list(zip((0.1, 0.55), rounds)), result, options.size.deadline_seconds,
                  keep_worker=True)
        result.notes["rejoin_probes"] = _await_rejoin(scenario, rounds)
        scenario.workers.stop()
        _note_hosts(result, scenario, network, rounds)
    taken_over = sum(result.notes.get(key, 0) for key in ("broker_redeliveries", "producer_resends",
                                                             "absorbed_by_inbox"))
    if taken_over == 0:
        result.error("nothing a cut-off or killed host held went to another host: the faults missed the batch")
    return result


def _hosts(network: Network, options: Options) -> Callable[[dict[str, str], Path], WorkerGroup]:
    """One worker per host, its URLs pointed at the bridge address (where the host finds the services)."""
    concurrency = 1 if options.short else WORKER_PROCESSES

    def make(env: dict[str, str], log_dir: Path) -> WorkerGroup:
        remote = {**env, **{name: on_host(env[name], network.gateway)
                            for name in ("FLOWRUNS_DATABASE_URL", "FLOWRUNS_BROKER_URL", "FLOWRUNS_RESULT_BACKEND")}}
        return WorkerGroup([WorkerProcess(remote, log_dir, f"partition-h{host.index}", concurrency=concurrency,
                                          code=options.worker_code, prefix=host.exec_prefix())
                            for host in network.hosts])

    return make


def _check_isolation(network: Network, port: int) -> None:
    """Each host reaches the services through its link, and nothing through its own loopback."""
    for host in network.hosts:
        if not reachable(host, network.gateway, port):
            raise ChaosSetupError(f"host {host.index} cannot reach PostgreSQL at {network.gateway}:{port}")
        if reachable(host, "127.0.0.1", port):
            raise ChaosSetupError(f"host {host.index} reaches 127.0.0.1:{port}: its namespace is not isolated")


class Round:
    """One fault round: cut one host's link; a few seconds in, SIGKILL another host's worker and restart
    it after the visibility timeout; heal the link once the cut has lasted `seconds`. Records when."""

    def __init__(self, network: Network, scenario: World, *, cut: int, kill: int, seconds: float,
                 probe_port: int) -> None:
        self.network = network
        self.database_url = scenario.database_url
        self.cut_host = network.hosts[cut]
        self.cut_worker = scenario.workers.workers[cut]
        self.kill = kill
        self.kill_worker = scenario.workers.workers[kill]
        self.seconds = seconds
        self.probe_port = probe_port
        self.cut_at = self.healed_at = self.restarted_at = 0.0
        """Wall-clock moments (the worker logs' clock)."""

    def __call__(self) -> str:
        network, host = self.network, self.cut_host
        moment = cut_mid_transaction(network, host, self.database_url)
        if moment is None:
            moment = _moment(self.cut_worker.await_busy() is not None)
            network.cut(host)
        self.cut_at, began = time.time(), time.monotonic()
        blocked = not reachable(host, network.gateway, self.probe_port, timeout=0.5)
        time.sleep(max(0.0, KILL_AFTER_SECONDS - (time.monotonic() - began)))
        kill_busy = self.kill_worker.await_busy() is not None
        killed = self.kill_worker.kill_all()
        time.sleep(VISIBILITY_TIMEOUT_SECONDS + 1)
        self.kill_worker.start()
        self.restarted_at = time.time()
        self.kill_worker.wait_for_children(WORKER_START_SECONDS)
        time.sleep(max(0.0, self.seconds - (time.monotonic() - began)))
        network.heal(host)
        self.healed_at = time.time()
        if not blocked:
            raise ChaosSetupError(f"host {host.index} still reached PostgreSQL with its link cut")
        return (f"cut host {host.index}'s link ({host.link}) {moment} for "
                f"{self.healed_at - self.cut_at:.0f}s; {KILL_AFTER_SECONDS:.0f}s in, on host {self.kill + 1} "
                f"{_moment(kill_busy)}: {killed}, restarted {VISIBILITY_TIMEOUT_SECONDS + 1}s later; "
                f"healed host {host.index}")


def _moment(busy: bool) -> str:
    return "mid-task" if busy else "while idle"


OPEN_TRANSACTION = """
SELECT pid, xact_start FROM pg_stat_activity
WHERE client_addr = %s AND state = 'idle in transaction' AND xact_start IS NOT NULL
"""
"""A backend of the host inside a transaction, waiting for the host's next statement."""
STILL_OPEN = """
SELECT 1 FROM pg_stat_activity WHERE pid = %s AND xact_start = %s AND state = 'idle in transaction'
"""
CUT_ATTEMPTS = 40


def cut_mid_transaction(network: Network, host: Host, database_url: str) -> str | None:
    """Cut the host's link while one of its database sessions is inside a transaction waiting for its
    next statement, which then cannot arrive: the transaction stays open, holding its locks, while
    other hosts run the same requests. A cut that lands just after the transaction ended is healed
    at once (a flap of a few milliseconds) and tried again. What the cut struck, or None with the
    link intact when no such moment came."""
    with psycopg.connect(make_url(database_url).set(drivername="postgresql").render_as_string(False),
                         autocommit=True) as connection:
        for attempt in range(1, CUT_ATTEMPTS + 1):
            deadline, found = time.monotonic() + 1.0, None
            while found is None and time.monotonic() < deadline:
                found = connection.execute(OPEN_TRANSACTION, (host.address,)).fetchone()
            if found is None:
                continue
            network.cut(host)
            if connection.execute(STILL_OPEN, found).fetchone() is not None:
                flaps = f" after {attempt - 1} flaps" if attempt > 1 else ""
                return f"mid-transaction (backend {found[0]} left idle in transaction{flaps})"
            network.heal(host)
            time.sleep(0.2)
    return None


RECEIVED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] Task [\w.]+\[[0-9a-f-]{36}\] "
                      r"received", re.MULTILINE)


def received_times(log: str) -> list[float]:
    """When a worker received each task, from its log (local time, as logging writes it)."""
    return [datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp() for stamp in RECEIVED.findall(log)]


REJOIN_SECONDS = 90.0
"""How long after the batch a faulted host may take to consume again (a worker whose connection the
broker closed during the cut reconnects on its own backoff)."""


def _await_rejoin(scenario: World, rounds: list[Round]) -> int:
    """Until every host that was cut off or killed has taken work since (or REJOIN_SECONDS pass), send
    counts, which write nothing, for the idle hosts to share; how many were sent."""
    def rejoined() -> bool:
        for fault in rounds:
            for worker, since in ((fault.cut_worker, fault.healed_at), (fault.kill_worker, fault.restarted_at)):
                if since and not any(moment > since for moment in received_times(worker.log_text())):
                    return False
        return True

    probes, deadline = 0, time.monotonic() + REJOIN_SECONDS
    while not rejoined() and time.monotonic() < deadline:
        for _ in range(HOSTS * 2):
            scenario.driver.call("flow_runs.count_flow_runs", {}, timeout=REJOIN_SECONDS)
            probes += 1
    return probes


def _note_hosts(result: ScenarioResult, scenario: World, network: Network, rounds: list[Round]) -> None:
    """Deliveries per host, and around each round: the cut-off host took work again after the heal, the
    killed one after its restart (the batch's, or the rejoin probes'), and some host worked all
    through the cut."""
    per_host: dict[str, str] = {}
    logs = {host.index: worker.log_text() for host, worker in zip(network.hosts, scenario.workers.workers)}
    times = {index: received_times(log) for index, log in logs.items()}
    for index, log in logs.items():
        absorbed, races = delivery_counts(log)[2], log.count("lost a race to a copy of itself")
        per_host[f"host {index}"] = (f"{len(times[index])} deliveries, {absorbed} absorbed by the inbox, "
                                     f"{races} rolled back after losing a race to a copy")
    for number, fault in enumerate(rounds, 1):
        if not fault.healed_at:
            continue
        cut, killed = fault.cut_host.index, fault.kill + 1
        after_heal = sum(1 for moment in times[cut] if moment > fault.healed_at)
        after_restart = sum(1 for moment in times[killed] if moment > fault.restarted_at)
        through = {index: sum(1 for moment in moments if fault.cut_at < moment < fault.healed_at)
                   for index, moments in times.items() if index != cut}
        per_host[f"round {number}"] = (
            f"host {cut} cut: {after_heal} deliveries after the heal; host {killed} killed: {after_restart} after "
            "its restart; during the cut: " + ", ".join(f"host {index} {count}" for index, count in through.items()))
        if after_heal == 0:
            result.error(f"round {number}: host {cut} took no work after its link was healed")
        if after_restart == 0:
            result.error(f"round {number}: host {killed} took no work after its restart")
        if not any(through.values()):
            result.error(f"round {number}: no host took work while host {cut} was cut off")
    result.notes["hosts"] = per_host
