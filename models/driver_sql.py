"""Hot-path statements executed on the psycopg connection itself, below SQLAlchemy's execution layer.

A transition is two statements; through `Connection.execute` each one also pays for SQLAlchemy's
execution context, its result metadata and psycopg's column descriptions — more CPU than the
statement's own round trip. A `DriverStatement` is a SQLAlchemy Core statement compiled once for
the connection's dialect, with the bind and result processors of its types taken from the same
compilation, so values cross exactly as they would through `Connection.execute`.

What is kept from SQLAlchemy: the session's connection and transaction (the statement runs inside
it; the caller's commit or rollback ends it), `before_cursor_execute` listeners (instrumentation
still sees every statement), and its error classes — a driver error is raised as the
`sqlalchemy.exc.DBAPIError` subclass `Connection.execute` would raise, and a lost connection is
invalidated so the pool never hands it out again.

PostgreSQL only: SQLite keeps `Connection.execute` (see `supported`).
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any]
CoreStatement = sa.Select[Any] | sa.Insert | sa.Update | sa.Delete


def supported(session: Session) -> bool:
    """Whether the session's connection is psycopg's (the only driver this path speaks)."""
    return session.get_bind().dialect.driver == "psycopg"


class DriverStatement:
    """A Core statement compiled for one dialect: its SQL text and its types' processors."""

    def __init__(self, statement: CoreStatement, dialect: Dialect) -> None:
        compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
        self.sql: str = str(compiled)
        # Literal values in the statement (`x + 1`) are bound parameters with a value of their own.
        self._literals: dict[str, Any] = {
            name: bind.effective_value for name, bind in compiled.binds.items() if not bind.required
        }
        self._bind_processors: tuple[tuple[str, Processor], ...] = tuple(
            (name, processor)
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        )
        # What a SELECT selects, or a DML statement's RETURNING columns (none without RETURNING).
        processors = [
            column.type.dialect_impl(dialect).result_processor(dialect, None)
            for column in statement.exported_columns
        ]
        self._result_processors: tuple[tuple[int, Processor], ...] = tuple(
            (index, processor) for index, processor in enumerate(processors) if processor is not None
        )

    def parameters(self, values: Mapping[str, Any]) -> dict[str, Any]:
        bound = {**self._literals, **values} if self._literals else dict(values)
        for name, processor in self._bind_processors:
            if name in bound:
                bound[name] = processor(bound[name])
        return bound

    def row(self, raw: Sequence[Any] | None) -> tuple[Any, ...] | None:
        if raw is None or not self._result_processors:
            return tuple(raw) if raw is not None else None
        values = list(raw)
        for index, processor in self._result_processors:
            values[index] = processor(values[index])
        return tuple(values)


def first(session: Session, statement: CoreStatement, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The first row of a SELECT (or a statement with RETURNING) run in the session's transaction;
    None when there is none. Through the driver when it is psycopg, else `Connection.execute`."""
    if not supported(session):
        row = session.connection().execute(statement, values).first()
        return None if row is None else tuple(row)
    compiled = _compiled(statement, session.get_bind().dialect)
    return compiled.row(_execute(session.connection(), compiled, values).fetchone())


def first_mapping(session: Session, statement: CoreStatement, values: Mapping[str, Any]) -> dict[str, Any] | None:
    """`first`, as a mapping of the statement's column names (its labels) to values."""
    row = first(session, statement, values)
    return None if row is None else dict(zip(_column_names(statement), row))


@functools.lru_cache(maxsize=1024)
def _column_names(statement: CoreStatement) -> tuple[str, ...]:
    return tuple(column.key for column in statement.exported_columns)


def execute(session: Session, statement: CoreStatement, values: Mapping[str, Any]) -> None:
    """Run a statement that returns no rows in the session's transaction (as `first` does)."""
    if not supported(session):
        session.connection().execute(statement, values)
        return
    _execute(session.connection(), _compiled(statement, session.get_bind().dialect), values)


@functools.lru_cache(maxsize=1024)
def _compiled(statement: CoreStatement, dialect: Dialect) -> DriverStatement:
    # Keyed by the statement object: callers pass statements they build once and cache.
    return DriverStatement(statement, dialect)


def _execute(connection: Connection, statement: DriverStatement, values: Mapping[str, Any]) -> psycopg.Cursor[Any]:
    driver_connection = connection.connection.driver_connection
    assert isinstance(driver_connection, psycopg.Connection)
    parameters = statement.parameters(values)
    cursor = driver_connection.cursor()
    if connection.dispatch.before_cursor_execute:
        connection.dispatch.before_cursor_execute(connection, cursor, statement.sql, parameters, None, False)
    try:
        cursor.execute(statement.sql, parameters, prepare=True)
    except psycopg.Error as error:
        raise _as_sqlalchemy_error(connection, driver_connection, cursor, statement, parameters, error) from error
    return cursor


def _as_sqlalchemy_error(
    connection: Connection,
    driver_connection: psycopg.Connection[Any],
    cursor: psycopg.Cursor[Any],
    statement: DriverStatement,
    parameters: dict[str, Any],
    error: psycopg.Error,
) -> sa_exc.StatementError:
    """The error `Connection.execute` would have raised; a connection that is gone is invalidated
    first, so that its transaction is over and the pool replaces it."""
    dialect = connection.dialect
    disconnected = dialect.is_disconnect(cast(Any, error), cast(Any, driver_connection), cast(Any, cursor))
    if disconnected:
        connection.invalidate(error)
    return sa_exc.DBAPIError.instance(
        statement.sql,
        parameters,
        error,
        psycopg.Error,
        connection_invalidated=disconnected,
        dialect=dialect,
    )
