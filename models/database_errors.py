"""What a database error means for the request that met it: try again, refuse it, or neither.

A request is retried only when trying again can succeed: the connection was lost or refused, the
server is shutting down or out of resources, or the transaction lost a serialization race, a
deadlock or a lock wait. An error about the request's own data (a value out of range or too long,
an index entry too big, a constraint) fails at once as a `ValidationError` naming the field: the
same data would fail the same way however often it is sent. Anything else is a defect and fails
as itself.
"""

import enum
import re
import sqlite3

import psycopg
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from models.orm import Base


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"
    """Try again, with backoff."""
    REFUSED = "refused"
    """The request's data: a `ValidationError`, never retried."""
    CANCELLED = "cancelled"
    """A statement cancelled by `statement_timeout` (or an operator)."""
    OTHER = "other"
    """Not a database error, or one that trying again will not mend."""


TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "53", "58"})
"""Connection exception, insufficient resources (disk full, out of memory, too many connections),
system error (I/O)."""
TRANSIENT_SQLSTATES = frozenset({
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
    "55P03",  # lock_not_available (lock_timeout)
    "57P01",  # admin_shutdown
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now
})
REFUSED_SQLSTATE_CLASSES = frozenset({"22", "23", "54"})
"""Data exception, integrity constraint violation, program limit exceeded."""
CANCELLED_SQLSTATE = "57014"

SQLITE_TRANSIENT_ERRORS = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_CANTOPEN",
                           "SQLITE_PROTOCOL")
SQLITE_REFUSED_ERRORS = ("SQLITE_TOOBIG", "SQLITE_RANGE", "SQLITE_MISMATCH", "SQLITE_CONSTRAINT")
CLIENT_SIDE_LIMITS = ("number of parameters must be between", "too many SQL variables")
"""Refusals a driver raises without a SQLSTATE: the statement, not the connection, is at fault."""

SQLITE_CONSTRAINT_COLUMN = re.compile(r"constraint failed: (?P<table>\w+)\.(?P<column>\w+)")
"""SQLite names the column of a failed constraint in its message (it has no diagnostics)."""

REQUEST_FIELDS = {
    "flow_run_state": "state",
    "task_run_state": "state",
    "processed_request": "task_id",
    "concurrency_limit_v2": "deployment.concurrency_limit",
}
"""Where a table's values come from in a request, when that is not the table's own name."""


def classify(error: BaseException) -> ErrorKind:
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return ErrorKind.TRANSIENT
    if isinstance(error, sa_exc.DisconnectionError):
        return ErrorKind.TRANSIENT
    original = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    if isinstance(original, psycopg.Error) and original.sqlstate:
        return _by_sqlstate(original.sqlstate)
    if isinstance(original, sqlite3.Error):
        return _sqlite_kind(original)
    if any(limit in str(original) for limit in CLIENT_SIDE_LIMITS):
        return ErrorKind.REFUSED
    if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError)) or isinstance(
        original, (psycopg.OperationalError, psycopg.InterfaceError)
    ):
        return ErrorKind.TRANSIENT  # raised by the client without a SQLSTATE: the connection failed
    if isinstance(error, (sa_exc.DataError, sa_exc.IntegrityError)) or isinstance(
        original, (psycopg.DataError, psycopg.IntegrityError)
    ):
        return ErrorKind.REFUSED
    return ErrorKind.OTHER


def _by_sqlstate(sqlstate: str) -> ErrorKind:
    if sqlstate == CANCELLED_SQLSTATE:
        return ErrorKind.CANCELLED
    if sqlstate in TRANSIENT_SQLSTATES or sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES:
        return ErrorKind.TRANSIENT
    if sqlstate[:2] in REFUSED_SQLSTATE_CLASSES:
        return ErrorKind.REFUSED
    return ErrorKind.OTHER


def _sqlite_kind(error: sqlite3.Error) -> ErrorKind:
    name = getattr(error, "sqlite_errorname", "") or ""
    if name.startswith(SQLITE_TRANSIENT_ERRORS) or "database is locked" in str(error):
        return ErrorKind.TRANSIENT
    if (
        isinstance(error, (sqlite3.DataError, sqlite3.IntegrityError))
        or name.startswith(SQLITE_REFUSED_ERRORS)
        or any(limit in str(error) for limit in CLIENT_SIDE_LIMITS)
    ):
        return ErrorKind.REFUSED
    return ErrorKind.OTHER


def refusal_message(error: BaseException, fallback_field: str) -> str:
    """`field: what the database refused`, the field found from the error's table, column or index."""
    original = error.orig if isinstance(error, sa_exc.DBAPIError) else error
    diagnostic = getattr(original, "diag", None)
    text = (getattr(diagnostic, "message_primary", None) or str(original).splitlines()[0]).strip()
    if diagnostic is not None:
        field = _field_of(diagnostic.table_name, diagnostic.column_name, diagnostic.constraint_name)
    elif named := SQLITE_CONSTRAINT_COLUMN.search(text):
        field = _field_of(named["table"], named["column"], None)
    else:
        field = None
    return f"{field or fallback_field}: refused by the database ({text})"


def _field_of(table: str | None, column: str | None, constraint: str | None) -> str | None:
    if table is None:
        return None
    column = column or _text_column_of(table, constraint)
    prefix = REQUEST_FIELDS.get(table, table)
    return f"{prefix}.{column}" if column else prefix


def _text_column_of(table_name: str, constraint: str | None) -> str | None:
    """The first text column of the index or constraint named `constraint` on `table_name`."""
    table = Base.metadata.tables.get(table_name)
    if table is None or constraint is None:
        return None
    for index_or_constraint in (*table.indexes, *table.constraints):
        if index_or_constraint.name == constraint:
            for column in getattr(index_or_constraint, "columns", ()):
                if isinstance(column.type, sa.String):
                    return str(column.name)
    return None
