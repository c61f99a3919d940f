"""`flowruns bench`: a tiny run of the in-process bench end to end, and the CPU accounting that
`bench worker` reports with."""

import json
import os
import time

import pytest
from click.testing import CliRunner

from flowruns_tools import cpu_usage
from tasks.cli import main


@pytest.mark.usefixtures("database_url")
def test_bench_models_measures_every_figure_in_a_scratch_database() -> None:
    result = CliRunner().invoke(main, ["bench", "models", "--sizes", "60", "--transitions", "5", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{"):])
    figures = {figure["name"]: figure["value"] for figure in report["figures"]}
    rates = ("creates/s (with a Scheduled state)", "core-policy transitions/s (no limit)",
             "core-policy transitions/s (limit 10)", "creates/s, 4 threads in one process",
             "core-policy transitions/s, 4 threads in one process", "deletes/s",
             "core-policy transitions/s as the worker makes them (no limit)",
             "core-policy transitions/s as the worker makes them (limit 10)",
             "core-policy transitions/s as the worker makes them, 4 threads in one process",
             "creates/s as the worker makes them", "creates/s as the worker makes them, 4 threads in one process")
    for name in (*rates, "single-row commits/s (as bench limit)"):
        assert figures[name] > 0
    for label in ("state-type", "tag", "deployment", "task-run"):
        assert figures[f"read 200 + JSON, {label} filter, 60 runs: median"] > 0
        assert figures[f"count, {label} filter, 60 runs: median"] > 0
    notes = {figure["name"]: figure["note"] for figure in report["figures"]}
    ratios = {figure["name"]: figure["of_commit_rate"] for figure in report["figures"]}
    for name in rates:
        assert ratios[name] > 0 and notes[name].endswith("× the single-row commit rate")
        assert "not accepted" not in notes[name], f"{name}: a transition of the bench was not accepted"
    for name in rates:
        if "transitions/s" in name:
            assert "conflicts decided again" in notes[name]


@pytest.mark.skipif(not cpu_usage.available(), reason="needs /proc")
def test_cpu_usage_counts_what_a_process_spends() -> None:
    me = os.getpid()
    before = cpu_usage.snapshot([me])
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:
        pass
    after = cpu_usage.snapshot([me])
    assert cpu_usage.process_seconds(before, after, [me]) >= 0.1
    assert after.machine_busy - before.machine_busy >= 0.1
    assert cpu_usage.process_seconds(before, after, [2**22 + 12345]) == 0.0  # no such process
