"""The chaos scenarios in their short form (`flowruns chaos --short`): every request takes effect
exactly once through worker SIGKILLs, PostgreSQL and Redis restarts and duplicate deliveries, and
generated malformed requests are refused without retry or write.

Each scenario runs a real worker (prefork, two processes) from this checkout against a database of
its own on the test server and Redis database 12 (shared test database: the scenario deletes only its
own queue and results), or a PostgreSQL cluster / redis-server of its own on a free port.
"""

import dataclasses
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from flowruns_tools import chaos
from tasks import deployments, flow_runs, flows, task_runs, work_queues
from tests.celery_support import REDIS_URL, _redis_available, apply, follow_ups, offline_app, ok, row_counts  # noqa: F401

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.postgres_only]

CHAOS_REDIS_DB = 12
"""The chaos tests' Redis database (the rest of the suite uses 14 and 15): its workers run with a short
visibility timeout, which would restore other workers' unacknowledged messages early."""


@pytest.fixture(scope="module")
def options(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[chaos.Options]:
    if not _redis_available(f"{REDIS_URL}/{CHAOS_REDIS_DB}"):
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield chaos.Options(
        database_url=database_url, redis_url=f"{REDIS_URL}/0", short=True, redis_db=CHAOS_REDIS_DB,
        exclusive_redis=False, log_dir=tmp_path_factory.mktemp("chaos-logs"),
    )


def assert_exactly_once(result: chaos.ScenarioResult) -> None:
    report = chaos.format_table([result], chaos.Options(database_url="", redis_url="", short=True), result.seconds)
    assert result.requests > 0, report
    assert (result.lost, result.duplicated, result.slot_drift, result.over_limit) == (0, 0, 0, 0), report
    assert result.applied == result.requests, report
    assert result.errors == [], report
    assert result.passed, report


def test_worker_sigkill_loses_and_doubles_nothing(options: chaos.Options) -> None:
    result = chaos.worker_sigkill(options)
    assert_exactly_once(result)
    assert len(result.faults) >= 3 and any("main process" in fault for fault in result.faults)
    assert result.slot_samples > 10


def test_postgres_restart_mid_batch_retries_and_loses_nothing(options: chaos.Options) -> None:
    try:
        chaos.find_pg_bindir(options.pg_bindir)
    except chaos.ChaosSetupError as error:
        pytest.skip(str(error))
    result = chaos.postgres_restart(options)
    assert_exactly_once(result)
    assert result.notes["connection_retries"] > 0


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server binary")
def test_redis_restart_mid_batch_keeps_queued_requests(options: chaos.Options) -> None:
    # The restart comes at a moment of the batch, not of the queue: on a busy machine the worker
    # may have taken every waiting request just then. Such a batch is still checked, and the
    # scenario runs once more for a restart that finds requests queued.
    for _ in range(2):
        result = chaos.broker_restart(options)
        assert result.name == "redis-restart"
        assert_exactly_once(result)
        (before, after), = result.notes["queued_before_after_restart"]
        if before > 0:
            break
    assert before > 0, "the restart should find requests waiting in the queue"
    assert after > 0 or before < 5, "the queue should survive the restart (append-only file)"


def test_every_message_delivered_twice_and_replayed_takes_effect_once(options: chaos.Options) -> None:
    result = chaos.duplicate_delivery(options)
    assert_exactly_once(result)
    assert result.messages >= 3 * result.requests
    assert result.notes["absorbed_by_inbox"] >= result.requests


def test_generated_malformed_requests_fail_at_once_and_write_nothing(options: chaos.Options) -> None:
    pytest.importorskip("hypothesis")
    result = chaos.bad_input(options)
    assert_exactly_once(result)
    assert set(result.notes["categories"]) == {
        "wrong type", "unknown field", "unknown state type", "missing field", "unknown id"}


def test_hostile_bodies_mixed_into_a_batch_take_no_worker_down(options: chaos.Options) -> None:
    pytest.importorskip("hypothesis")
    result = chaos.hostile_input(options)
    assert_exactly_once(result)
    assert result.notes["hostile_sent"] == result.notes["hostile_refused"] >= 2 * len(chaos.HAND_PICKED)
    assert result.crashes == [] and result.notes["tasks_interrupted_by_kills"] == 0


def test_scenario_names_and_sizes() -> None:
    assert list(chaos.SCENARIOS) == [
        "worker-sigkill", "postgres-restart", "broker-restart", "partition", "duplicate-delivery", "bad-input",
        "hostile-input", "poison-message"]
    assert chaos.SHORT.runs < chaos.FULL.runs and chaos.FULL.bad_bodies >= 1000


def test_an_exclusive_redis_database_must_be_empty(options: chaos.Options) -> None:
    import redis

    url = chaos.redis_url_with_db(options.redis_url, CHAOS_REDIS_DB)
    client = redis.Redis.from_url(url)
    key = f"flowruns-chaos-test-{uuid.uuid4().hex}"
    client.set(key, "someone's data")
    try:
        with pytest.raises(chaos.ChaosSetupError, match="--redis-db"):
            with chaos.redis_database(url, exclusive=True):
                pass  # pragma: no cover
        assert client.get(key) == b"someone's data"
    finally:
        client.delete(key)
        client.close()


def test_redis_urls_keep_credentials_and_hide_them_in_output() -> None:
    assert chaos.redis_url_with_db("redis://:pw@h:6379/0", 13) == "redis://:pw@h:6379/13"
    assert chaos.redis_url_with_db("redis://h:6379", 13) == "redis://h:6379/13"
    assert chaos.safe_url("redis://user:pw@h:6379/13") == "redis://user:***@h:6379/13"


# ------------------------------------------------- values PostgreSQL cannot store

HOSTILE: list[tuple[Any, Any, str]] = [
    (flows.create_flow, lambda w: {"flow": {"name": "nul\x00byte"}}, "flow.name"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": w["flow_id"], "parameters": {"x": "\x00"}}},
     "flow_run.parameters.x"),
    (flow_runs.create_flow_run, lambda w: {"flow_run": {"flow_id": w["flow_id"], "parameters": {"k\x00": 1}}},
     "flow_run.parameters.k"),
    (flow_runs.set_flow_run_state, lambda w: {"flow_run_id": w["run_id"], "state": {"type": "RUNNING",
                                                                                      "message": "\x00"}},
     "state.message"),
    (flow_runs.read_flow_runs, lambda w: {"offset": 2**63}, "offset"),
    (task_runs.create_task_run, lambda w: {"task_run": {"flow_run_id": w["run_id"], "task_key": "k\x00",
                                                        "dynamic_key": "0"}}, "task_run.task_key"),
    (task_runs.create_task_run, lambda w: {"task_run": {"flow_run_id": w["run_id"], "task_key": "k",
                                                        "dynamic_key": "0", "tags": ["ok", "n\x00"]}},
     "task_run.tags.1"),
    (deployments.create_deployment, lambda w: {"deployment": {"name": "d", "flow_id": w["flow_id"],
                                                              "concurrency_limit": 2**31}},
     "deployment.concurrency_limit"),
    (work_queues.create_work_queue, lambda w: {"work_queue": {"name": "q", "priority": 2**40}}, "work_queue.priority"),
]


@pytest.mark.usefixtures("db", "follow_ups")
@pytest.mark.parametrize("case", range(len(HOSTILE)))
def test_values_postgresql_cannot_store_are_refused_as_validation_errors(case: int) -> None:
    """NUL characters anywhere (text and JSON alike) and integers beyond their column's range
    fail as the contract's ValidationError naming the field, before anything is written."""
    flow = ok(flows.create_flow, flow={"name": "hostile"})
    run = ok(flow_runs.create_flow_run, flow_run={"flow_id": flow["id"]})
    task, kwargs, field = HOSTILE[case]
    before = row_counts()
    result = apply(task, **kwargs({"flow_id": flow["id"], "run_id": run["id"]}))
    assert row_counts() == before
    assert result.state == "FAILURE"
    assert type(result.result).__name__ == "ValidationError", f"{type(result.result).__name__}: {result.result}"
    assert str(result.result).startswith(field), str(result.result)


# ------------------------------------------------------------------------------------- CLI


def test_the_chaos_and_bench_worker_commands_are_wired() -> None:
    from click.testing import CliRunner

    from tasks.cli import main

    runner = CliRunner()
    chaos_help = runner.invoke(main, ["chaos", "--help"])
    assert chaos_help.exit_code == 0 and "--short" in chaos_help.output and "--json" in chaos_help.output
    bench_help = runner.invoke(main, ["bench", "worker", "--help"])
    assert bench_help.exit_code == 0 and "--concurrency" in bench_help.output and "--in-flight" in bench_help.output
    unknown = runner.invoke(main, ["chaos", "--scenario", "meteor-strike"])
    assert unknown.exit_code != 0 and "worker-sigkill" in unknown.output


def test_chaos_refuses_a_database_other_than_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from models.settings import reset_settings
    from tasks.cli import main

    monkeypatch.setenv("FLOWRUNS_DATABASE_URL", "sqlite:///nowhere.db")
    reset_settings()
    try:
        result = CliRunner().invoke(main, ["chaos", "--short"])
    finally:
        monkeypatch.undo()
        reset_settings()
    assert result.exit_code != 0 and "PostgreSQL" in result.output


def test_messages_that_kill_their_pool_process_are_parked_among_a_normal_batch(options: chaos.Options) -> None:
    result = chaos.poison_message(options)
    assert_exactly_once(result)
    assert result.notes["tasks_interrupted_by_kills"] >= 2 * 3  # each killer ran until its third loss


# -- the same scenarios with RabbitMQ as the broker (results stay in Redis) ----------------------------


@pytest.fixture(scope="module")
def rabbitmq_options(options: chaos.Options) -> Iterator[chaos.Options]:
    from tests.rabbitmq import RABBITMQ_URL, require_rabbitmq

    require_rabbitmq()
    yield dataclasses.replace(options, broker="rabbitmq", rabbitmq_url=RABBITMQ_URL)


@pytest.mark.parametrize("scenario", ["worker-sigkill", "postgres-restart", "duplicate-delivery", "bad-input",
                                      "hostile-input"])
def test_every_scenario_holds_on_rabbitmq(rabbitmq_options: chaos.Options, scenario: str) -> None:
    if scenario in ("bad-input", "hostile-input"):
        pytest.importorskip("hypothesis")
    result = chaos.run_scenario(scenario, rabbitmq_options)
    assert result.broker == "rabbitmq"
    assert_exactly_once(result)


def test_a_rabbitmq_node_restart_mid_batch_loses_nothing(rabbitmq_options: chaos.Options) -> None:
    result = chaos.broker_restart(rabbitmq_options)
    assert result.name == "rabbitmq-restart"
    assert_exactly_once(result)
    assert len(result.faults) == 1 and "started again" in result.faults[0]


def test_a_message_that_kills_its_worker_again_and_again_is_dead_lettered_on_rabbitmq(
    rabbitmq_options: chaos.Options,
) -> None:
    result = chaos.poison_message(rabbitmq_options)
    assert_exactly_once(result)
    assert result.notes["dead_lettered_by_rabbitmq"] >= 1
    assert result.notes["worker_restarts"] >= 2  # delivered three times: over the scenario's limit of 2


# -- several worker hosts, one cut off, one killed, one working -----------------------------------------


def assert_partition_held(result: chaos.ScenarioResult) -> None:
    assert_exactly_once(result)
    fault, = result.faults
    assert re.search(r"cut host 1's link \(\w+\) mid-(transaction|task)", fault), fault  # it held work
    assert "SIGKILL main process" in fault and "healed host 1" in fault
    hosts = result.notes["hosts"]
    assert {"host 1", "host 2", "host 3", "round 1"} <= set(hosts)
    # something a faulted host held was applied elsewhere, or re-sent, or came back and was absorbed
    assert result.notes["broker_redeliveries"] + result.notes["producer_resends"] + \
        result.notes["absorbed_by_inbox"] > 0


@pytest.fixture()
def netns() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the partition scenario needs root and `ip` (network namespaces)")


@pytest.mark.usefixtures("netns")
def test_a_partition_a_kill_and_a_heal_across_three_worker_hosts_lose_and_double_nothing(
    options: chaos.Options,
) -> None:
    assert_partition_held(chaos.run_scenario("partition", options))


@pytest.mark.usefixtures("netns")
def test_a_partition_across_three_worker_hosts_on_rabbitmq_loses_and_doubles_nothing(
    rabbitmq_options: chaos.Options,
) -> None:
    result = chaos.run_scenario("partition", rabbitmq_options)
    assert result.broker == "rabbitmq"
    assert_partition_held(result)
