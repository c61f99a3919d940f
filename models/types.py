"""Column types that behave the same on PostgreSQL and SQLite."""

import datetime
import os
import time
import uuid
from typing import Any

import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def uuid7() -> uuid.UUID:
    """A time-ordered UUID (RFC 9562 version 7): states sort by creation."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


class Timestamp(sa.types.TypeDecorator[datetime.datetime]):
    """A timezone-aware UTC timestamp on both dialects; naive values are refused."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"timestamps must be timezone-aware, got naive {value!r}")
        if value.tzinfo is not datetime.timezone.utc:
            value = value.astimezone(datetime.timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=datetime.timezone.utc)
        if value.tzinfo is datetime.timezone.utc:
            return value  # PostgreSQL sessions run in UTC (see models.database): already so
        return value.astimezone(datetime.timezone.utc)


class JSON(sa.types.TypeDecorator[Any]):
    """JSONB on PostgreSQL (NaN and infinities stored as null), JSON elsewhere."""

    impl = sa.JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSONB(none_as_null=True))
        return dialect.type_descriptor(sa.JSON(none_as_null=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return _replace_non_finite(value)
        return value


_SCALARS = (str, int, bool, type(None))


def _replace_non_finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        if all(isinstance(v, _SCALARS) for v in value.values()):
            return value  # the common case (flat, no floats): nothing to replace, nothing to copy
        return {k: _replace_non_finite(v) for k, v in value.items()}
    if isinstance(value, list):
        if all(isinstance(v, _SCALARS) for v in value):
            return value
        return [_replace_non_finite(v) for v in value]
    return value


class Pydantic(sa.types.TypeDecorator[Any]):
    """A JSON column validated into a pydantic type on read and dumped in JSON mode on write.

    In-place mutation of a loaded value is not tracked: assign a new object.
    """

    impl = JSON
    cache_ok = True

    def __init__(self, pydantic_type: Any, sa_column_type: Any = None) -> None:
        super().__init__()
        self._pydantic_type = pydantic_type
        self._adapter: TypeAdapter[Any] = TypeAdapter(pydantic_type)

    @property
    def python_type(self) -> Any:
        return self._pydantic_type

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        validated = self._adapter.validate_python(value)
        dumped = self._adapter.dump_python(validated, mode="json")
        return self.impl_instance.process_bind_param(dumped, dialect)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return self._adapter.validate_python(value)

    def __repr__(self) -> str:
        return "JSON()"
