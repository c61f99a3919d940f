"""Base classes for the pydantic schemas."""

import copy
import datetime
import enum
import random
from typing import Annotated, Any, ClassVar, TypeVar
from uuid import UUID, uuid4

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from models.types import now_utc, uuid7


def _require_aware(value: datetime.datetime) -> datetime.datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp must carry a UTC offset")
    if value.tzinfo is datetime.timezone.utc:
        return value  # the common case (read back from the database): nothing to convert
    return value.astimezone(datetime.timezone.utc)


ModelT = TypeVar("ModelT", bound=BaseModel)

INT32_MAX = 2**31 - 1
"""The largest value of an INTEGER column (limits, priorities): larger ones are refused as invalid."""
INT64_MAX = 2**63 - 1
"""The largest BIGINT (offsets)."""

DateTime = Annotated[datetime.datetime, AfterValidator(_require_aware)]
"""A timestamp that must carry its UTC offset; stored and returned as UTC."""


class FlowrunsModel(BaseModel):
    """Lenient base for read models: unknown fields are ignored, durations are float seconds."""

    model_config = ConfigDict(ser_json_timedelta="float", extra="ignore")


class ActionModel(BaseModel):
    """Strict base for request bodies: unknown fields are refused."""

    model_config = ConfigDict(ser_json_timedelta="float", extra="forbid")


class IDModel(FlowrunsModel):
    id: UUID = Field(default_factory=uuid4)


class TimeSeriesModel(FlowrunsModel):
    id: UUID = Field(default_factory=uuid7)


class ORMModel(FlowrunsModel):
    """A schema readable from an ORM row; `created`/`updated` come from the database."""

    model_config = ConfigDict(from_attributes=True, ser_json_timedelta="float", extra="ignore")
    created: DateTime | None = Field(default=None, repr=False)
    updated: DateTime | None = Field(default=None, repr=False)


_ADJECTIVES = (
    "amber", "bold", "brisk", "calm", "clever", "crimson", "daring", "eager", "fancy", "gentle",
    "golden", "happy", "jolly", "keen", "lively", "lucky", "mellow", "nimble", "proud", "quiet",
    "rapid", "silver", "steady", "swift", "tidy", "vivid", "warm", "witty", "zealous", "cosmic",
)
_ANIMALS = (
    "badger", "bison", "crane", "dolphin", "falcon", "ferret", "gecko", "heron", "ibis", "jaguar",
    "koala", "lemur", "lynx", "marten", "newt", "ocelot", "otter", "panda", "quail", "raven",
    "salmon", "seal", "stork", "tapir", "toucan", "viper", "walrus", "wombat", "yak", "zebra",
)


def generate_slug() -> str:
    """A random two-word run name, as Prefect gives unnamed runs."""
    return f"{random.choice(_ADJECTIVES)}-{random.choice(_ANIMALS)}"


def default_name(value: Any) -> Any:
    return value or generate_slug()


__all__ = [
    "INT32_MAX",
    "INT64_MAX",
    "ActionModel",
    "ClassVar",
    "DateTime",
    "FlowrunsModel",
    "IDModel",
    "ORMModel",
    "TimeSeriesModel",
    "deep_copy",
    "default_name",
    "generate_slug",
    "now_utc",
]


_IMMUTABLE = (
    type(None), str, bytes, bool, int, float, UUID, datetime.datetime, datetime.timedelta, enum.Enum
)


def deep_copy(model: ModelT) -> ModelT:
    """`model.model_copy(deep=True)` at a fraction of the cost: immutable field values (ids,
    timestamps, strings, enums) are shared, nested models are copied the same way, anything
    else (containers) goes through `copy.deepcopy`."""
    copied = model.model_copy()
    for name, value in model.__dict__.items():
        if isinstance(value, _IMMUTABLE):
            continue
        copied.__dict__[name] = deep_copy(value) if isinstance(value, BaseModel) else copy.deepcopy(value)
    return copied
