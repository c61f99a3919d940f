"""Parameters are bounded as Prefect bounds them: by their size as compact JSON (no space after
`,` or `:`, non-ASCII characters as `\\u` escapes), at most FLOWRUNS_MAX_PARAMETER_SIZE_BYTES
(524,288) bytes, the limit itself included, on every body that carries them (FlowRunCreate,
FlowRunUpdate, DeploymentCreate). Over the limit is a ValidationError naming the field, not
retried, and nothing is written."""

import json
from collections.abc import Callable
from typing import Any

import pytest

from models.settings import reset_settings
from tasks import deployments, flow_runs, flows
from tests.celery_support import apply, follow_ups, offline_app, ok, refused, row_counts  # noqa: F401

pytestmark = pytest.mark.usefixtures("db", "follow_ups")

LIMIT = 524_288
"""Prefect's `server.api.max_parameter_size`, flowruns' FLOWRUNS_MAX_PARAMETER_SIZE_BYTES default."""


def compact_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def ascii_text(size: int) -> dict[str, Any]:
    return {"x": "a" * (size - compact_size({"x": ""}))}


def non_ascii_text(size: int) -> dict[str, Any]:
    """Each `é` counts six bytes (`\\u00e9`), as Prefect counts it; ASCII pads the remainder."""
    characters, rest = divmod(size - compact_size({"x": ""}), 6)
    return {"x": "é" * characters + "a" * rest}


def many_keys(size: int) -> dict[str, Any]:
    """Thousands of small entries: where the default separators would count a third more."""
    parameters: dict[str, Any] = {f"k{i:05d}": i % 10 for i in range(40_000)}
    parameters["pad"] = ""
    parameters["pad"] = "p" * (size - compact_size(parameters))
    return parameters


SHAPES: dict[str, Callable[[int], dict[str, Any]]] = {
    "ascii": ascii_text, "non-ascii": non_ascii_text, "many keys": many_keys,
}


@pytest.fixture
def flow_id() -> str:
    return str(ok(flows.create_flow, flow={"name": "sized"})["id"])


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_parameters_of_exactly_the_limit_are_stored_by_every_body(shape: str, flow_id: str) -> None:
    parameters = SHAPES[shape](LIMIT)
    assert compact_size(parameters) == LIMIT

    run = ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, "parameters": parameters})
    assert ok(flow_runs.read_flow_run, flow_run_id=run["id"])["parameters"] == parameters

    other = ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id})
    assert ok(flow_runs.update_flow_run, flow_run_id=other["id"], flow_run={"parameters": parameters}) is True
    assert ok(flow_runs.read_flow_run, flow_run_id=other["id"])["parameters"] == parameters

    deployment = ok(deployments.create_deployment, deployment={"name": "d", "flow_id": flow_id,
                                                               "parameters": parameters})
    assert ok(deployments.read_deployment, deployment_id=deployment["id"])["parameters"] == parameters


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_one_byte_over_the_limit_is_refused_naming_the_field(shape: str, flow_id: str, retries: list[Any]) -> None:
    parameters = SHAPES[shape](LIMIT + 1)
    assert compact_size(parameters) == LIMIT + 1
    run = ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, "parameters": {"kept": 1}})
    before = row_counts()
    reason = f"Value error, {LIMIT + 1} bytes as compact JSON, over the limit of {LIMIT} bytes " \
             "(FLOWRUNS_MAX_PARAMETER_SIZE_BYTES)"

    assert refused(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, "parameters": parameters}) == (
        f"flow_run.parameters: {reason}"
    )
    assert refused(flow_runs.update_flow_run, flow_run_id=run["id"], flow_run={"parameters": parameters}) == (
        f"flow_run.parameters: {reason}"
    )
    assert refused(deployments.create_deployment, deployment={"name": "d", "flow_id": flow_id,
                                                              "parameters": parameters}) == (
        f"deployment.parameters: {reason}"
    )
    assert retries == []
    assert row_counts() == before
    assert ok(flow_runs.read_flow_run, flow_run_id=run["id"])["parameters"] == {"kept": 1}


def test_the_audits_462001_byte_parameters_are_taken(flow_id: str) -> None:
    """42,000 small entries: 462,001 bytes as compact JSON, 546,000 with a space after each separator."""
    parameters = {f"k{i:05d}": i % 10 for i in range(42_000)}
    assert compact_size(parameters) == 462_001 and len(json.dumps(parameters)) == 546_000
    run = ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, "parameters": parameters})
    assert ok(flow_runs.read_flow_run, flow_run_id=run["id"])["parameters"] == parameters


def test_job_variables_of_the_limit_in_compact_json_are_taken(flow_id: str) -> None:
    """Prefect does not bound job_variables; flowruns bounds them as every free-form field
    (FLOWRUNS_MAX_JSON_FIELD_BYTES, 524,288), measured as parameters are, so any job_variables
    as large as the largest parameters are taken."""
    job_variables = many_keys(LIMIT)
    run = ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, "job_variables": job_variables})
    assert ok(flow_runs.read_flow_run, flow_run_id=run["id"])["job_variables"] == job_variables
    deployment = ok(deployments.create_deployment, deployment={"name": "d", "flow_id": flow_id,
                                                               "job_variables": job_variables})
    assert ok(deployments.read_deployment, deployment_id=deployment["id"])["job_variables"] == job_variables


def test_empty_parameters_are_not_measured(monkeypatch: pytest.MonkeyPatch, flow_id: str) -> None:
    """As Prefect: `{}` passes even a limit smaller than its two bytes; 0 turns the bound off."""
    monkeypatch.setenv("FLOWRUNS_MAX_PARAMETER_SIZE_BYTES", "1")
    reset_settings()
    try:
        ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, "parameters": {}})
        assert refused(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, "parameters": {"a": 1}}).startswith(
            "flow_run.parameters: Value error, 7 bytes as compact JSON, over the limit of 1 bytes"
        )
        monkeypatch.setenv("FLOWRUNS_MAX_PARAMETER_SIZE_BYTES", "0")
        reset_settings()
        ok(flow_runs.create_flow_run, flow_run={"flow_id": flow_id, "parameters": SHAPES["ascii"](2 * LIMIT)})
    finally:
        monkeypatch.delenv("FLOWRUNS_MAX_PARAMETER_SIZE_BYTES")
        reset_settings()
