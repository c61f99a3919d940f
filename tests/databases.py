"""Throw-away databases for the test suite: one per test session, built through the migrations."""

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

ADMIN_URL = os.environ.get(
    "FLOWRUNS_TEST_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def test_dialect() -> str:
    """`postgresql` (the default) or `sqlite`, from FLOWRUNS_TEST_DB."""
    value = os.environ.get("FLOWRUNS_TEST_DB", "postgresql").lower()
    return "sqlite" if value.startswith("sqlite") else "postgresql"


def build_schema(url: str) -> None:
    from models.migrations import upgrade

    upgrade(url)


@contextmanager
def temporary_database(tmp_dir: Path, dialect: str | None = None) -> Iterator[str]:
    """Create an empty database of the dialect, yield its URL, drop it afterwards."""
    dialect = dialect or test_dialect()
    if dialect == "sqlite":
        path = tmp_dir / f"flowruns-{uuid.uuid4().hex[:8]}.db"
        yield f"sqlite:///{path}"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    name = f"flowruns_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield str(sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False))
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


CLEAR_ATTEMPTS = 5


def clear_tables(engine: sa.Engine) -> None:
    """Empty every table, keeping the schema (between tests).

    A test's worker may still be finishing a follow-up task (a cleanup enqueued after commit);
    if that transaction and the TRUNCATE deadlock, PostgreSQL aborts one of them: try again.
    """
    for attempt in range(1, CLEAR_ATTEMPTS + 1):
        try:
            _clear_tables_once(engine)
            return
        except sa.exc.OperationalError:
            if attempt == CLEAR_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)


def _clear_tables_once(engine: sa.Engine) -> None:
    from models.orm import Base

    tables = [t.name for t in Base.metadata.sorted_tables]
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(f"TRUNCATE {', '.join(tables)} CASCADE")
        else:
            connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
            for table in reversed(tables):
                connection.exec_driver_sql(f"DELETE FROM {table}")
