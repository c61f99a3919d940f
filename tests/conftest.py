"""Fixtures: a real database per test session (PostgreSQL or SQLite), emptied between tests."""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before any flowruns module builds its Celery app: in-process task bodies publish follow-ups to an
# in-memory broker, never to a developer's Redis. Integration tests give their worker explicit URLs.
os.environ["FLOWRUNS_BROKER_URL"] = "memory://"
os.environ["FLOWRUNS_RESULT_BACKEND"] = "cache+memory://"

import pytest
from sqlalchemy.orm import Session

from models import database
from models.settings import reset_settings
from tests.databases import build_schema, clear_tables, temporary_database, test_dialect


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with temporary_database(Path(tmp_path_factory.mktemp("db"))) as url:
        previous = os.environ.get("FLOWRUNS_DATABASE_URL")
        os.environ["FLOWRUNS_DATABASE_URL"] = url
        reset_settings()
        database.dispose_engines()
        build_schema(url)
        try:
            yield url
        finally:
            database.dispose_engines()
            if previous is None:
                os.environ.pop("FLOWRUNS_DATABASE_URL", None)
            else:
                os.environ["FLOWRUNS_DATABASE_URL"] = previous
            reset_settings()


@pytest.fixture
def db(database_url: str) -> Iterator[str]:
    """The test database, emptied after the test."""
    yield database_url
    clear_tables(database.get_engine(database_url))


@pytest.fixture
def retries(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every retry a task asks for while the test runs (its `exc`)."""
    from tasks.base import FlowrunsTask

    asked: list[Any] = []
    real = FlowrunsTask.retry

    def spy(self: FlowrunsTask, *args: Any, **kwargs: Any) -> Any:
        asked.append(kwargs.get("exc"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FlowrunsTask, "retry", spy)
    return asked


@pytest.fixture
def session(db: str) -> Iterator[Session]:
    """A session on the test database; the test commits when it wants rows to persist."""
    session = database.get_session_factory(db)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if test_dialect() == "postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (row locks, concurrent writers)")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


pytest_plugins = ["tests.fixtures"]
