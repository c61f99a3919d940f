"""`flowruns chaos`: fault-injection scenarios proving exactly-once effects under at-least-once delivery.

Each scenario drives a batch through a real worker (`celery -A tasks worker`, prefork, two
processes) from a foreign producer (a bare `Celery()` sending task names with JSON kwargs, each
request with its own task id, re-sent under the same id when no result arrives in time), injects
its fault while the batch runs, lets the worker drain, then compares what was sent with what the
database recorded (CONTRACT section 3, DESIGN invariants 1-4):

- every request has exactly one inbox row, whose outcome is the result the producer received;
- every state a result names is in its run's history, and the history holds no other state (a
  request that orchestrated twice would leave one no result accounts for);
- no transition id appears twice in a run's history;
- for every limit `active_slots == holding records <= limit`, sampled every few milliseconds while
  the batch runs (one statement: one snapshot) and once more at the end; no holding outlives its
  run's active states.

Scenarios never touch a user's data: each works in a PostgreSQL database of its own (on the
configured server, or on a cluster of its own made with initdb) and a Redis database of its own
(on the configured server, which must be empty and is emptied afterwards, or on a redis-server of
its own), on a queue of its own. Beat does not run: nothing repairs drift behind the checks' back.

Modules: `services` (databases, Redis, PostgreSQL clusters, worker processes), `rabbitmq` (vhosts and
nodes), `netns` (worker hosts in network namespaces), `producer` (the foreign producer), `workload`
(the batch), `checks` (slot monitor and verdict), `scenarios`, `partition`, `bad_input`,
`hostile_input`, `poison_message`, `runner` (the command's table and exit status).
"""

from flowruns_tools.chaos.bad_input import bad_input, bad_requests, generate
from flowruns_tools.chaos.checks import ScenarioResult, SlotMonitor, SlotReading
from flowruns_tools.chaos.hostile_input import HAND_PICKED, HostileBody, generated_bodies, hostile_input
from flowruns_tools.chaos.partition import partition
from flowruns_tools.chaos.poison_message import poison_message
from flowruns_tools.chaos.producer import Driver, Request
from flowruns_tools.chaos.runner import SCENARIOS, format_table, run_chaos, run_scenario
from flowruns_tools.chaos.scenarios import (
    FULL,
    SHORT,
    VISIBILITY_TIMEOUT_SECONDS,
    Options,
    Size,
    World,
    broker_restart,
    duplicate_delivery,
    postgres_restart,
    rabbitmq_restart,
    redis_restart,
    table_counts,
    worker_sigkill,
    world,
)
from flowruns_tools.chaos.services import (
    ChaosSetupError,
    PostgresCluster,
    RedisServer,
    WorkerProcess,
    database_on,
    find_pg_bindir,
    free_port,
    postgres_url,
    redis_database,
    redis_url_with_db,
    safe_url,
    worker_env,
)

__all__ = [
    "FULL", "HAND_PICKED", "SCENARIOS", "SHORT", "VISIBILITY_TIMEOUT_SECONDS", "ChaosSetupError", "Driver", "HostileBody", "Options",
    "PostgresCluster", "RedisServer", "Request", "ScenarioResult", "Size", "SlotMonitor", "SlotReading", "WorkerProcess",
    "World", "bad_input", "bad_requests", "broker_restart", "database_on", "duplicate_delivery", "find_pg_bindir", "format_table",
    "free_port", "generate", "generated_bodies", "hostile_input", "partition", "poison_message", "postgres_restart", "postgres_url", "rabbitmq_restart", "redis_database",
    "redis_restart",
    "redis_url_with_db", "run_chaos", "run_scenario", "safe_url", "table_counts", "worker_env", "worker_sigkill",
    "world",
]
