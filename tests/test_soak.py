"""`flowruns chaos --soak` in miniature: forty seconds of steady mixed load through a real worker
(prefork, two processes) with beat running beside it, a row every ten seconds, an inbox retention
of fifteen seconds pruned every five; every request still takes effect exactly once.

The worker works in a database of its own on the test server and Redis database 11 (shared test
database: the soak deletes only its own queues and results)."""

import json
from collections.abc import Iterator

import pytest

from flowruns_tools import chaos
from flowruns_tools.chaos.soak import (
    SoakPlan,
    SoakRun,
    run_and_plot,
    soak_json,
    soak_text,
)
from tests.celery_support import REDIS_URL, _redis_available

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.postgres_only]

SOAK_REDIS_DB = 11
"""The soak tests' Redis database (the chaos tests use 12, the rest of the suite 14 and 15)."""
KINDS = ("create", "transition", "read", "count", "cleanup")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def options(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> chaos.Options:
    if not _redis_available(f"{REDIS_URL}/{SOAK_REDIS_DB}"):
        pytest.skip(f"no Redis at {REDIS_URL}")
    return chaos.Options(database_url=database_url, redis_url=f"{REDIS_URL}/0", redis_db=SOAK_REDIS_DB,
                         exclusive_redis=False, log_dir=tmp_path_factory.mktemp("soak-logs"))


@pytest.fixture(scope="module")
def soak(options: chaos.Options, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoakRun]:
    plan = SoakPlan(minutes=40 / 60, interval_seconds=10, retention_seconds=15, prune_every_seconds=5,
                    plot=tmp_path_factory.mktemp("soak-plot") / "soak.png")
    yield run_and_plot(options, plan)


def test_a_soak_with_pruning_loses_and_doubles_nothing(soak: SoakRun, options: chaos.Options) -> None:
    result = soak.result
    report = soak_text(soak, options)
    assert (result.lost, result.duplicated, result.slot_drift, result.over_limit) == (0, 0, 0, 0), report
    assert result.errors == [] and result.applied == result.requests > 0, report
    assert result.passed, report
    assert result.notes["reads"] > 0 and result.notes["counts"] > 0, report


def test_every_kind_flows_in_every_interval(soak: SoakRun) -> None:
    busy = [row for row in soak.rows if all(row.rate(kind) > 0 for kind in KINDS)]
    assert len(busy) >= 3, [row.as_dict()["per_second"] for row in soak.rows]
    assert all(row.latency_ms["all"][1] is not None for row in busy)
    assert all(row.sample.worker_rss_kb > 0 for row in soak.rows)


def test_beat_prunes_the_inbox_while_the_state_history_grows(soak: SoakRun) -> None:
    pruned = sum(row.pruned for row in soak.rows)
    inbox = soak.rows[-1].rows_of("processed_request")
    assert pruned > 0 and soak.result.notes["inbox_rows_pruned"] == pruned
    assert inbox < soak.result.requests, f"{inbox} inbox rows for {soak.result.requests} requests"
    states = [row.rows_of("flow_run_state") for row in soak.rows]
    assert states == sorted(states) and states[-1] > states[0]


def test_the_series_comes_as_a_table_as_json_and_as_a_png(soak: SoakRun, options: chaos.Options) -> None:
    assert soak.plan.plot.read_bytes()[:8] == PNG_MAGIC
    text = soak_text(soak, options)
    for column in ("req/s", *KINDS, "p99 ms", "RSS MB", "state rows", "inbox rows", "index MB", "pruned"):
        assert column in text
    assert all(row.label in text for row in soak.rows) and "PASS" in text
    document = json.loads(json.dumps(soak_json(soak, options), default=str))
    assert document["passed"] is True and document["scenarios"][0]["name"] == "soak"
    series = document["series"]
    assert len(series) == len(soak.rows)
    assert set(series[0]["per_second"]) == set(KINDS)
    assert series[-1]["tables"]["flow_run_state"]["rows"] == soak.rows[-1].rows_of("flow_run_state")


def test_a_long_soak_keeps_five_minutes_of_inbox_pruned_every_minute() -> None:
    plan = SoakPlan(minutes=30)
    assert (plan.retention, plan.prune_every, plan.capture_every) == (300, 60, 60)
    assert plan.boundaries()[:2] == [60, 120] and len(plan.boundaries()) == 30
    assert SoakPlan(minutes=0.75, interval_seconds=10).boundaries() == [10, 20, 30, 40, 45]


def test_the_soak_options_are_wired() -> None:
    from click.testing import CliRunner

    from tasks.cli import main

    runner = CliRunner()
    help_text = runner.invoke(main, ["chaos", "--help"]).output
    assert "--soak" in help_text and "--soak-plot" in help_text and "--soak-interval" in help_text
    refused = runner.invoke(main, ["chaos", "--soak", "5", "--broker", "both"])
    assert refused.exit_code == 2 and "one broker" in refused.output
