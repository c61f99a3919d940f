"""Engine, sessions and the unit of work, bound to `FLOWRUNS_DATABASE_URL`."""

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pydantic_core
import sqlalchemy as sa
from psycopg import pq
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.util import identity_key

from models.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000

InstanceT = TypeVar("InstanceT")

_engines: dict[str, Engine] = {}
_session_factories: dict[str, sessionmaker[Session]] = {}


def create_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with the dialect set-up flowruns relies on.

    SQLite has no row locks, so every transaction starts with `BEGIN IMMEDIATE`
    (the database write lock) and foreign keys are switched on for cascades.

    JSON read back is parsed by pydantic-core's parser: the same values as `json.loads` (NaN,
    infinities, big integers, duplicate keys included), at a fraction of the cost on wide reads.
    """
    kwargs.setdefault("json_deserializer", pydantic_core.from_json)
    if url.startswith("sqlite"):
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    # Sessions in UTC: timestamps arrive as UTC datetimes, with nothing left to convert. No
    # statement runs, and no lock is waited for, longer than the settings allow: the attempt fails
    # (and is retried, for a write) instead of holding a worker process.
    settings = get_settings()
    options = (
        f"-c timezone=UTC -c statement_timeout={_milliseconds(settings.statement_timeout_seconds)}"
        f" -c lock_timeout={_milliseconds(settings.lock_timeout_seconds)}"
    )
    connect_args = {"options": options, **kwargs.pop("connect_args", {})}
    return sa.create_engine(url, pool_size=10, max_overflow=20, connect_args=connect_args, **kwargs)


def _milliseconds(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database_url
    engine = _engines.get(url)
    if engine is None:
        engine = _engines[url] = create_engine(url)
    return engine


def get_session_factory(url: str | None = None) -> sessionmaker[Session]:
    url = url or get_settings().database_url
    factory = _session_factories.get(url)
    if factory is None:
        factory = _session_factories[url] = sessionmaker(
            bind=get_engine(url), expire_on_commit=False, autoflush=True
        )
    return factory


def dispose_engines() -> None:
    """Close every pooled connection (after fork, in tests, on shutdown)."""
    for engine in _engines.values():
        engine.dispose()
    _engines.clear()
    _session_factories.clear()
    _autocommit_session_factory.cache_clear()


@contextmanager
def unit_of_work(url: str | None = None) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error."""
    session = get_session_factory(url)()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


@contextmanager
def statement_unit(url: str | None = None) -> Iterator[Session]:
    """A session whose statements each commit on their own (PostgreSQL autocommit), for work whose
    every write is one atomic statement: a transition reads, then writes and commits in one round
    trip. (`explicit_transaction` opens a transaction in it where several statements must hold
    together.) On other databases, `unit_of_work`."""
    engine = get_engine(url)
    if engine.dialect.name != "postgresql":
        with unit_of_work(url) as session:
            yield session
        return
    session = _autocommit_session_factory(engine)()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


@functools.cache
def _autocommit_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


def commits_each_statement(session: Session) -> bool:
    """Whether each statement the session runs now commits on its own: a `statement_unit` session
    outside a transaction `explicit_transaction` opened."""
    connection = session.connection()
    driver = connection.connection.driver_connection
    if connection.dialect.name != "postgresql" or getattr(driver, "autocommit", False) is not True:
        return False
    return driver.info.transaction_status == pq.TransactionStatus.IDLE  # type: ignore[union-attr]


@contextmanager
def explicit_transaction(session: Session) -> Iterator[None]:
    """Several statements that must commit together: a transaction of their own when the session's
    connection commits each statement (`statement_unit`); otherwise they are in the caller's already
    (or in an enclosing `explicit_transaction`)."""
    if not commits_each_statement(session):
        yield
        return
    connection = session.connection()
    connection.exec_driver_sql("BEGIN")
    try:
        yield
    except BaseException:
        connection.exec_driver_sql("ROLLBACK")
        raise
    connection.exec_driver_sql("COMMIT")


def held_instance(session: Session, model: type[InstanceT], primary_key: Any) -> InstanceT | None:
    """The session's instance of `model` with this primary key, if it holds one. No identity key
    is built for a session that holds nothing (a worker's, on every hot path)."""
    identity_map = session.identity_map
    if not identity_map:
        return None
    return identity_map.get(identity_key(model, primary_key))  # type: ignore[no-any-return]


def one_row_anchor() -> sa.Subquery:
    """A one-row table to outer-join look-ups to: a statement of them always returns one row, with
    NULLs for what was not found (an inbox record answers even when its run is gone)."""
    return sa.select(sa.literal_column("1").label("one")).subquery("anchor")


@functools.cache
def table_insert(table: sa.Table) -> sa.Insert:
    """A plain INSERT of every column of `table`, built once (so its compiled form is reused)."""
    return sa.insert(table)


def limit_statement_time(session: Session, seconds: float) -> None:
    """Have PostgreSQL cancel any statement of this transaction that runs longer than `seconds`."""
    if dialect_name(session) == "postgresql":
        session.execute(_SET_STATEMENT_TIMEOUT, {"milliseconds": str(_milliseconds(seconds))})


_SET_STATEMENT_TIMEOUT = sa.text("SELECT set_config('statement_timeout', :milliseconds, true)")


def dialect_name(session: Session) -> str:
    return session.get_bind().dialect.name


def dialect_insert(session: Session, table: Any) -> Any:
    """An INSERT with the dialect's `on_conflict_do_nothing` (PostgreSQL and SQLite share it)."""
    return insert_for_dialect(dialect_name(session), table)


def insert_for_dialect(dialect: str, table: Any) -> Any:
    """`dialect_insert` by dialect name, for statements built once and cached per dialect."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)
