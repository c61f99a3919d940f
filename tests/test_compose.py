"""compose.yaml parses, wires its services with health conditions, and runs commands that exist."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from models.settings import Settings
from tasks.cli import main as flowruns_cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PROJECT_SERVICES = ["migrate", "worker", "beat", "flower", "metrics"]


def test_compose_has_every_service() -> None:
    assert set(SERVICES) == {"postgres", "redis", "migrate", "worker", "beat", "flower", "metrics"}


@pytest.mark.parametrize("name", ["postgres", "redis", "worker", "beat", "flower", "metrics"])
def test_long_running_services_have_healthchecks(name: str) -> None:
    assert SERVICES[name]["healthcheck"]["test"]


def test_beat_is_healthy_only_while_it_fires() -> None:
    assert SERVICES["beat"]["healthcheck"]["test"] == ["CMD", "flowruns", "check", "--only", "beat"]


def test_no_password_ships_in_the_file() -> None:
    """Passwords come from files named by required variables, as Docker secrets."""
    text = (ROOT / "compose.yaml").read_text()
    assert "change-me" not in text and "POSTGRES_PASSWORD:" not in text
    assert SERVICES["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    for name, variable in {"postgres_password": "FLOWRUNS_POSTGRES_PASSWORD_FILE",
                           "flower_basic_auth": "FLOWRUNS_FLOWER_BASIC_AUTH_FILE"}.items():
        assert COMPOSE["secrets"][name]["file"].startswith(f"${{{variable}:?")
    for name in PROJECT_SERVICES:
        environment = SERVICES[name]["environment"]
        assert make_url(environment["FLOWRUNS_DATABASE_URL"]).password is None
        assert environment["FLOWRUNS_DATABASE_PASSWORD_FILE"] == "/run/secrets/postgres_password"
        assert "postgres_password" in SERVICES[name]["secrets"]


def test_flower_starts_only_with_credentials_and_listens_on_this_host() -> None:
    flower = SERVICES["flower"]
    assert flower["command"][:2] == ["flowruns", "flower"]
    assert flower["environment"]["FLOWRUNS_FLOWER_BASIC_AUTH_FILE"] == "/run/secrets/flower_basic_auth"
    assert flower["ports"] == ["${FLOWER_BIND_ADDRESS:-127.0.0.1}:5555:5555"]
    refused = CliRunner().invoke(flowruns_cli, ["flower", "--port=5555"])
    assert refused.exit_code == 1 and "refusing to start Flower without credentials" in refused.output


def test_stopping_gives_running_tasks_their_soft_shutdown() -> None:
    from tasks.worker_app import SOFT_SHUTDOWN_SECONDS

    grace = SERVICES["worker"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > SOFT_SHUTDOWN_SECONDS


def test_requests_use_flowruns_own_queue() -> None:
    for name in PROJECT_SERVICES:
        assert SERVICES[name]["environment"]["FLOWRUNS_TASK_QUEUE"] == "flowruns"


def test_redis_persists_queued_requests() -> None:
    command = SERVICES["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "noeviction" in command


def test_worker_and_beat_wait_for_migration_and_redis() -> None:
    for name in ("worker", "beat"):
        depends = SERVICES[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"
    assert SERVICES["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_environment_uses_only_known_settings(name: str) -> None:
    known = {f"FLOWRUNS_{field.upper()}{suffix}" for field in Settings.model_fields for suffix in ("", "_FILE")}
    names = {key for key in SERVICES[name]["environment"] if key.startswith("FLOWRUNS_")}
    assert names and names <= known


@pytest.mark.parametrize("name", PROJECT_SERVICES)
def test_every_service_command_exists_in_the_project(name: str) -> None:
    command = SERVICES[name]["command"]
    if command[0] == "flowruns":
        subcommand = [part for part in command[1:] if not part.startswith("-")]
        result = CliRunner().invoke(flowruns_cli, [*subcommand, "--help"])
        assert result.exit_code == 0, result.output
        return
    assert command[:3] == ["celery", "-A", "tasks"]
    from celery import Celery

    import tasks

    assert isinstance(tasks.app, Celery)
    if command[3] == "flower":
        pytest.importorskip("flower")
    else:
        from celery.bin.celery import celery as celery_cli

        assert command[3] in celery_cli.commands


def test_image_build_copies_every_package_and_file_the_build_needs() -> None:
    import tomllib

    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = ("models", "orchestration", "tasks", "flowruns_tools")
    for package in packages:
        assert f"COPY {package} ./{package}" in dockerfile
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert {name.rstrip("*") for name in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]} == set(packages)
    project = pyproject["project"]
    copied = next(line for line in dockerfile.splitlines() if line.startswith("COPY pyproject.toml")).split()[1:-1]
    assert {"pyproject.toml", project["readme"], *project["license-files"]} <= set(copied)


def test_the_exporter_serves_metrics_on_this_host_by_default() -> None:
    metrics = SERVICES["metrics"]
    assert metrics["command"][:2] == ["flowruns", "metrics"]
    assert metrics["ports"] == ["${METRICS_BIND_ADDRESS:-127.0.0.1}:9808:9808"]
    assert "--port=9808" in metrics["command"] and "9808/metrics" in metrics["healthcheck"]["test"][1]


RABBITMQ_OVERRIDE = yaml.safe_load((ROOT / "compose.rabbitmq.yaml").read_text())


@pytest.mark.parametrize("name", [name for name in PROJECT_SERVICES if name != "migrate"])
def test_the_rabbitmq_variant_points_every_broker_user_at_rabbitmq(name: str) -> None:
    override = RABBITMQ_OVERRIDE["services"][name]
    environment = {**SERVICES[name]["environment"], **override["environment"]}
    known = {f"FLOWRUNS_{field.upper()}{suffix}" for field in Settings.model_fields for suffix in ("", "_FILE")}
    assert {key for key in environment if key.startswith("FLOWRUNS_")} <= known
    assert environment["FLOWRUNS_BROKER_URL"].startswith("amqp://flowruns@rabbitmq:5672/")
    assert environment["FLOWRUNS_RESULT_BACKEND"].startswith("redis://")  # results stay in Redis
    assert environment["FLOWRUNS_BROKER_PASSWORD_FILE"] == "/run/secrets/rabbitmq_password"
    assert "rabbitmq_password" in override["secrets"] and set(SERVICES[name]["secrets"]) <= set(override["secrets"])
    assert override["depends_on"]["rabbitmq"]["condition"] == "service_healthy"


def test_the_rabbitmq_service_persists_takes_its_password_from_a_secret_and_reports_health() -> None:
    rabbitmq = RABBITMQ_OVERRIDE["services"]["rabbitmq"]
    assert "/var/lib/rabbitmq" in rabbitmq["volumes"][0] and "rabbitmq-data" in RABBITMQ_OVERRIDE["volumes"]
    assert rabbitmq["hostname"] == "rabbitmq"
    assert "/run/secrets/rabbitmq_password" in rabbitmq["entrypoint"][-1]
    assert "RABBITMQ_DEFAULT_PASS" not in rabbitmq["environment"]
    assert rabbitmq["healthcheck"]["test"][:2] == ["CMD", "rabbitmq-diagnostics"]
    assert RABBITMQ_OVERRIDE["secrets"]["rabbitmq_password"]["file"].startswith("${FLOWRUNS_RABBITMQ_PASSWORD_FILE:?")
    vhost = rabbitmq["environment"]["RABBITMQ_DEFAULT_VHOST"]
    broker_url = RABBITMQ_OVERRIDE["services"]["worker"]["environment"]["FLOWRUNS_BROKER_URL"]
    assert broker_url.endswith(f"/{vhost}")
