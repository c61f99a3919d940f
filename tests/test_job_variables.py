"""A deployment run's job variables, updated over the wire, are checked against its work pool's
variables schema (over the schema's defaults and the deployment's variables), as Prefect's API
checks them; a refusal names the field and writes nothing."""

from typing import Any

import pytest

from models.errors import ValidationError
from models.job_variables import check_job_variables
from tasks import deployments, flow_runs, flows
from tasks import work_pools as work_pool_tasks
from tests.celery_support import follow_ups, offline_app, ok, refused  # noqa: F401

pytestmark = pytest.mark.usefixtures("db", "follow_ups")

TEMPLATE = {
    "job_configuration": {"image": "{{ image }}", "cpu": "{{ cpu }}"},
    "variables": {
        "type": "object",
        "properties": {
            "image": {"type": "string", "default": "python:3.12"},
            "cpu": {"type": "integer", "minimum": 1},
            "env": {"type": "object", "additionalProperties": {"type": "string"}},
        },
        "required": ["image"],
    },
}


def scheduled_deployment_run(template: dict[str, Any], deployment_variables: dict[str, Any] | None = None) -> str:
    flow_id = ok(flows.create_flow, flow={"name": "jobs"})["id"]
    ok(work_pool_tasks.create_work_pool, work_pool={"name": "pool", "type": "process", "base_job_template": template})
    deployment = ok(deployments.create_deployment, deployment={
        "name": "d", "flow_id": flow_id, "work_pool_name": "pool", "job_variables": deployment_variables or {}})
    run = ok(flow_runs.create_flow_run, flow_run={
        "flow_id": flow_id, "deployment_id": deployment["id"], "state": {"type": "SCHEDULED"}})
    return str(run["id"])


def job_variables_of(run_id: str) -> Any:
    return ok(flow_runs.read_flow_run, flow_run_id=run_id)["job_variables"]


def test_variables_that_satisfy_the_pool_schema_are_written() -> None:
    run_id = scheduled_deployment_run(TEMPLATE)
    assert ok(flow_runs.update_flow_run, flow_run_id=run_id, flow_run={"job_variables": {"cpu": 2, "env": {"A": "1"}}})
    assert job_variables_of(run_id) == {"cpu": 2, "env": {"A": "1"}}


def test_a_variable_of_the_wrong_type_is_refused_naming_it_and_nothing_is_written() -> None:
    run_id = scheduled_deployment_run(TEMPLATE)

    message = refused(flow_runs.update_flow_run, flow_run_id=run_id,
                      flow_run={"job_variables": {"cpu": "lots"}, "name": "renamed"})

    assert message == ("flow_run.job_variables: Error updating flow run: Validation failed for field 'cpu'. "
                       "Failure reason: 'lots' is not valid under any of the given schemas")  # integer or null
    run = ok(flow_runs.read_flow_run, flow_run_id=run_id)
    assert run["name"] != "renamed" and run["job_variables"] != {"cpu": "lots"}


def test_an_optional_variable_may_be_null_and_the_deployments_variables_count_too() -> None:
    run_id = scheduled_deployment_run(TEMPLATE, deployment_variables={"image": 3})
    message = refused(flow_runs.update_flow_run, flow_run_id=run_id, flow_run={"job_variables": {"cpu": None}})
    assert "Validation failed for field 'image'. Failure reason: 3 is not of type 'string'" in message
    assert ok(flow_runs.update_flow_run, flow_run_id=run_id, flow_run={"job_variables": {"cpu": None, "image": "x"}})


def test_a_pool_without_a_template_or_a_variables_schema_checks_nothing() -> None:
    run_id = scheduled_deployment_run({})
    assert ok(flow_runs.update_flow_run, flow_run_id=run_id, flow_run={"job_variables": {"anything": 1}})
    check_job_variables({"job_configuration": {"image": "python"}}, {}, {"anything": 1})


def test_a_required_variable_must_be_present_over_the_defaults() -> None:
    schema = {"type": "object", "properties": {"image": {"type": "string"}, "cpu": {"type": "integer", "default": 1}},
              "required": ["image", "cpu"]}
    check_job_variables({"variables": schema}, {}, {"image": "x"})  # cpu comes from its default
    with pytest.raises(ValidationError, match=r"Validation failed\. Failure reason: 'image' is a required property"):
        check_job_variables({"variables": schema}, {}, {"cpu": 2})


def test_an_invalid_default_lifts_the_required_check() -> None:
    """The value an invalid default would have given is unknown, so required is not checked."""
    schema = {"type": "object", "properties": {"image": {"type": "string"}, "cpu": {"type": "integer", "default": "x"}},
              "required": ["image", "cpu"]}
    check_job_variables({"variables": schema}, {}, {})


def test_an_invalid_variables_schema_is_refused() -> None:
    with pytest.raises(ValidationError, match="flow_run.job_variables: the work pool's variables schema is invalid"):
        check_job_variables({"variables": {"type": "object", "properties": {"cpu": {"type": "integr"}}}}, {}, {})


def test_a_pool_template_must_declare_every_placeholder_it_uses() -> None:
    template = {"job_configuration": {"command": "{{ command }} --cpu {{cpu}}"},
                "variables": {"type": "object", "properties": {"cpu": {"type": "integer"}}}}
    message = refused(work_pool_tasks.create_work_pool, work_pool={"name": "p", "type": "process",
                                                                   "base_job_template": template})
    assert "work_pool.base_job_template" in message and "undeclared variable(s): command." in message
    half = refused(work_pool_tasks.create_work_pool, work_pool={"name": "p", "base_job_template": {"variables": {}}})
    assert "must contain both a `job_configuration` key and a `variables` key" in half


def test_a_pool_whose_defaults_break_its_own_schema_is_refused() -> None:
    template = {"job_configuration": {"memory": "{{ memory }}"},
                "variables": {"type": "object", "properties": {"memory": {"type": "string", "default": 512}}}}
    message = refused(work_pool_tasks.create_work_pool, work_pool={"name": "p", "type": "process",
                                                                   "base_job_template": template})
    assert message == ("work_pool.base_job_template: Validation failed for work pool's job variable defaults: "
                       "Validation failed for field 'memory'. Failure reason: 512 is not valid under any of the "
                       "given schemas")
