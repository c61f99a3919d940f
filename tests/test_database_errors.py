"""Database errors by what they are: only what can succeed when tried again is retried; errors
about the request's data fail at once as `ValidationError` naming the field, and write nothing."""

import random
import sqlite3
import string
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import database
from models.database_errors import ErrorKind, classify, refusal_message
from models.settings import reset_settings
from tasks import flow_runs, flows
from tasks.base import FlowrunsTask
from tests.celery_support import apply, follow_ups, new_id, offline_app, ok, row_counts  # noqa: F401

pytestmark = pytest.mark.usefixtures("db", "follow_ups")


def raised_by(sql: str, parameters: dict[str, Any] | None = None) -> sa.exc.DBAPIError:
    """The error PostgreSQL really raises for `sql`, as SQLAlchemy hands it on."""
    with pytest.raises(sa.exc.DBAPIError) as caught:
        with database.unit_of_work() as session:
            session.execute(sa.text(sql), parameters or {})
    return caught.value


def incompressible(length: int) -> str:
    """Text PostgreSQL cannot compress into an index entry (repeated characters it would)."""
    generator = random.Random(length)
    return "".join(generator.choice(string.ascii_letters) for _ in range(length))


def raise_sqlstate(sqlstate: str) -> str:
    return f"DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{sqlstate}'; END $$"


TRANSIENT_SQLSTATES = {
    "40001": "serialization failure",
    "40P01": "deadlock",
    "55P03": "lock not available (lock_timeout)",
    "57P01": "administrator shutdown",
    "57P03": "cannot connect now",
    "08006": "connection failure",
    "53300": "too many connections",
}
REFUSED_SQLSTATES = {
    "22001": "string data right truncation (value too long)",
    "22003": "numeric value out of range",
    "23505": "unique violation",
    "23503": "foreign key violation",
    "54000": "program limit exceeded",
}


@pytest.mark.postgres_only
@pytest.mark.parametrize("sqlstate", sorted(TRANSIENT_SQLSTATES))
def test_races_and_lost_servers_are_transient(sqlstate: str) -> None:
    assert classify(raised_by(raise_sqlstate(sqlstate))) is ErrorKind.TRANSIENT


@pytest.mark.postgres_only
@pytest.mark.parametrize("sqlstate", sorted(REFUSED_SQLSTATES))
def test_data_integrity_and_program_limit_errors_are_refusals(sqlstate: str) -> None:
    assert classify(raised_by(raise_sqlstate(sqlstate))) is ErrorKind.REFUSED


@pytest.mark.postgres_only
def test_real_refusals_name_the_field() -> None:
    too_long = raised_by(
        "INSERT INTO flow (id, created, updated, name, tags) VALUES (gen_random_uuid(), now(), now(), :name, '[]')",
        {"name": incompressible(3000)},
    )
    assert type(too_long.orig).__name__ == "ProgramLimitExceeded"  # an OperationalError subclass
    assert classify(too_long) is ErrorKind.REFUSED
    assert refusal_message(too_long, "flow").startswith("flow.name: refused by the database (index row size")
    out_of_range = raised_by("SELECT CAST(:value AS integer)", {"value": 2**40})
    assert classify(out_of_range) is ErrorKind.REFUSED
    assert refusal_message(out_of_range, "deployment").startswith("deployment: refused by the database (integer out")


@pytest.mark.postgres_only
def test_a_terminated_backend_and_a_refused_connection_are_transient(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            pid = connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with database.get_engine().connect() as other:
                other.exec_driver_sql(f"SELECT pg_terminate_backend({pid})")
            with pytest.raises(sa.exc.DBAPIError) as terminated:
                connection.exec_driver_sql("SELECT 1")
        assert classify(terminated.value) is ErrorKind.TRANSIENT
    finally:
        engine.dispose()
    nowhere = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    with pytest.raises(sa.exc.OperationalError) as refused:
        nowhere.connect()
    assert classify(refused.value) is ErrorKind.TRANSIENT


@pytest.mark.postgres_only
def test_a_statement_timeout_is_a_cancellation() -> None:
    cancelled = raised_by("SELECT set_config('statement_timeout', '50', true); SELECT pg_sleep(2)")
    assert classify(cancelled) is ErrorKind.CANCELLED


def test_client_side_limits_are_refusals() -> None:
    too_many = psycopg.OperationalError("sending query and params failed: number of parameters must be between 0 and 65535")
    assert classify(sa.exc.OperationalError("SELECT", {}, too_many)) is ErrorKind.REFUSED
    assert classify(sa.exc.OperationalError("SELECT", {}, sqlite3.OperationalError("too many SQL variables"))) \
        is ErrorKind.REFUSED


def test_sqlite_errors_by_what_they_are() -> None:
    locked = sqlite3.OperationalError("database is locked")
    assert classify(sa.exc.OperationalError("INSERT", {}, locked)) is ErrorKind.TRANSIENT
    duplicate = sqlite3.IntegrityError("UNIQUE constraint failed: flow.name")
    assert classify(sa.exc.IntegrityError("INSERT", {}, duplicate)) is ErrorKind.REFUSED
    assert classify(sa.exc.ProgrammingError("SELECT", {}, sqlite3.ProgrammingError("no such table: x"))) \
        is ErrorKind.OTHER


# ---------------------------------------------------------------------------- through a task


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Retries run at once (eagerly) and quickly; yields the list of attempts the patched body made."""
    monkeypatch.setenv("FLOWRUNS_TASK_MAX_RETRIES", "2")
    monkeypatch.setenv("FLOWRUNS_READ_TIMEOUT_SECONDS", "0.2")
    reset_settings()
    made: list[int] = []
    yield made
    monkeypatch.delenv("FLOWRUNS_TASK_MAX_RETRIES")
    monkeypatch.delenv("FLOWRUNS_READ_TIMEOUT_SECONDS")
    reset_settings()


def failing_with(sql: str, made: list[int]) -> Any:
    """A model function that writes a flow (so a partial write would show), then meets `sql`'s error."""
    def body(session: Session, *_: Any, **__: Any) -> Any:
        made.append(1)
        session.execute(sa.text(
            "INSERT INTO flow (id, created, updated, name, tags) VALUES (:id, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
            ":name, '[]')"), {"id": new_id().replace("-", "") if database.get_engine().dialect.name == "sqlite"
                              else new_id(), "name": f"partial-{len(made)}"})
        session.execute(sa.text(sql))
    return body


@pytest.mark.postgres_only
def test_a_deadlocked_request_is_retried_and_writes_nothing_until_it_succeeds(
    monkeypatch: pytest.MonkeyPatch, attempts: list[int]
) -> None:
    monkeypatch.setattr(flow_runs.flow_runs, "update_flow_run", failing_with(raise_sqlstate("40P01"), attempts))
    before = row_counts()
    result = apply(flow_runs.update_flow_run, flow_run_id=new_id(), flow_run={"name": "n"})
    assert result.state == "FAILURE" and type(result.result).__name__ == "OperationalError"
    assert len(attempts) == 3  # the first attempt and FLOWRUNS_TASK_MAX_RETRIES retries
    assert row_counts() == before


@pytest.mark.postgres_only
def test_a_program_limit_fails_at_once_as_a_validation_error(
    monkeypatch: pytest.MonkeyPatch, attempts: list[int]
) -> None:
    spied: list[Any] = []
    real_retry = FlowrunsTask.retry
    monkeypatch.setattr(FlowrunsTask, "retry", lambda self, *a, **k: spied.append(k) or real_retry(self, *a, **k))
    monkeypatch.setattr(flow_runs.flow_runs, "update_flow_run", failing_with(raise_sqlstate("54000"), attempts))
    before = row_counts()
    result = apply(flow_runs.update_flow_run, flow_run_id=new_id(), flow_run={"name": "n"})
    assert result.state == "FAILURE" and type(result.result).__name__ == "ValidationError"
    assert str(result.result).startswith("flow_run_id: refused by the database (injected)")
    assert len(attempts) == 1 and spied == []
    assert row_counts() == before


def test_a_duplicate_key_that_is_no_copy_fails_as_a_validation_error(
    monkeypatch: pytest.MonkeyPatch, attempts: list[int]
) -> None:
    """A unique violation is retried only as the inbox race (twice, to find a copy's record); with
    no copy it is the request's own data."""
    ok(flows.create_flow, flow={"name": "taken"})

    def insert_taken(session: Session, *_: Any, **__: Any) -> Any:
        attempts.append(1)
        session.execute(sa.text("INSERT INTO flow (id, created, updated, name, tags) "
                                "SELECT :id, created, updated, name, tags FROM flow WHERE name = 'taken'"),
                        {"id": new_id().replace("-", "") if database.get_engine().dialect.name == "sqlite" else new_id()})

    monkeypatch.setattr(flow_runs.flow_runs, "update_flow_run", insert_taken)
    before = row_counts()
    result = apply(flow_runs.update_flow_run, flow_run_id=new_id(), flow_run={"name": "n"})
    assert result.state == "FAILURE" and type(result.result).__name__ == "ValidationError"
    assert str(result.result).startswith("flow.name: refused by the database (")
    assert len(attempts) == 3
    assert row_counts() == before


@pytest.mark.postgres_only
def test_a_read_over_its_time_bound_is_refused_not_retried(
    monkeypatch: pytest.MonkeyPatch, attempts: list[int]
) -> None:
    def slow_count(session: Session, *_: Any, **__: Any) -> int:
        attempts.append(1)
        session.execute(sa.text("SELECT pg_sleep(2)"))
        return 0

    monkeypatch.setattr(flow_runs, "count_matching_flow_runs", slow_count)
    result = apply(flow_runs.count_flow_runs)
    assert result.state == "FAILURE" and type(result.result).__name__ == "InvalidRequestError"
    assert "took longer than 0.2 s (FLOWRUNS_READ_TIMEOUT_SECONDS)" in str(result.result)
    assert len(attempts) == 1
