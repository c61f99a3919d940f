"""compose.yaml parses, wires its services with health conditions, and runs commands that exist."""

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from models.settings import Settings
from tasks.cli import main as flowruns_cli

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
PROJECT_SERVICES = ["migrate", "worker", "beat", "flower"]


def test_compose_has_every_service() -> None:
    assert set(SERVICES) == {"postgres", "redis", "migrate", "worker", "beat", "flower"}


@pytest.mark.parametrize("name", ["postgres", "redis", "worker", "flower"])
def test_long_running_services_have_healthchecks(name: str) -> None:
    assert SERVICES[name]["healthcheck"]["test"]


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
    known = {f"FLOWRUNS_{field.upper()}" for field in Settings.model_fields}
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


def test_image_build_copies_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("models", "orchestration", "tasks"):
        assert f"COPY {package} ./{package}" in dockerfile
