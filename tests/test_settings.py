"""The settings object: secrets from files, the database password kept out of the URL an operator
writes, and limits that contradict each other refused."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from models.settings import Settings


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "postgres_password"
    path.write_text("s3cr3t-from-a-file\n")
    return path


def test_a_setting_comes_from_the_file_its_FILE_variable_names(
    monkeypatch: pytest.MonkeyPatch, secret_file: Path
) -> None:
    monkeypatch.setenv("FLOWRUNS_DATABASE_URL", "postgresql+psycopg://flowruns@db:5432/flowruns")
    monkeypatch.setenv("FLOWRUNS_DATABASE_PASSWORD_FILE", str(secret_file))

    settings = Settings()

    assert settings.database_url == "postgresql+psycopg://flowruns:s3cr3t-from-a-file@db:5432/flowruns"
    assert "s3cr3t" not in repr(settings.database_password)


def test_the_variable_itself_wins_over_its_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    queue_file = tmp_path / "queue"
    queue_file.write_text("from-file")
    monkeypatch.setenv("FLOWRUNS_TASK_QUEUE_FILE", str(queue_file))
    assert Settings().task_queue == "from-file"
    monkeypatch.setenv("FLOWRUNS_TASK_QUEUE", "from-variable")
    assert Settings().task_queue == "from-variable"


def test_an_unreadable_secret_file_is_an_error_naming_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWRUNS_FLOWER_BASIC_AUTH_FILE", "/nonexistent/flower")
    with pytest.raises(ValueError, match="FLOWRUNS_FLOWER_BASIC_AUTH_FILE: cannot read /nonexistent/flower"):
        Settings()


def test_the_hard_time_limit_must_exceed_the_soft_one() -> None:
    with pytest.raises(ValidationError, match="must exceed FLOWRUNS_TASK_SOFT_TIME_LIMIT_SECONDS"):
        Settings(task_soft_time_limit_seconds=60, task_time_limit_seconds=30)


def test_the_broker_password_from_a_file_goes_into_the_broker_url_escaped(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from kombu import Connection

    password_file = tmp_path / "rabbitmq_password"
    password_file.write_text("p@ss/w:rd\n")
    monkeypatch.setenv("FLOWRUNS_BROKER_URL", "amqp://flowruns@rabbitmq:5672/")
    monkeypatch.setenv("FLOWRUNS_BROKER_PASSWORD_FILE", str(password_file))

    connection = Connection(Settings().broker_url)

    assert (connection.userid, connection.password, connection.hostname, connection.port) == (
        "flowruns", "p@ss/w:rd", "rabbitmq", 5672)
