"""Bounds on request values, so the database never refuses a value validation let through.

Short texts (names, keys, versions, tags, queue and pool names) go into btree indexes, whose
entries PostgreSQL caps at 2,704 bytes; the longest index holds two of them (a task run's
`flow_run_id, task_key, dynamic_key`), so each is at most 1,024 bytes of UTF-8. Free-form JSON
fields (`parameters`, `job_variables`, `context`, state data, labels, ...) are bounded by their
encoded size, filter lists by their length (one request's lists together stay far below the
65,535 parameters a PostgreSQL statement may carry).
"""

import json
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, Field

from models.settings import get_settings

SHORT_TEXT_MAX_BYTES = 1024
"""The most UTF-8 bytes of a name, key, version or tag."""
SHORT_TEXT_FAST_CHARACTERS = SHORT_TEXT_MAX_BYTES // 4
"""A string this short cannot exceed the byte bound (UTF-8 takes at most 4 bytes a character)."""
FILTER_VALUES_MAX = 1_000
"""The most values one filter list (`any_`, `all_`, `not_any_`, ...) may hold."""
TAGS_MAX = 1_000
"""The most tags one object may carry."""
LABELS_MAX = 1_000
"""The most labels one object may carry."""

Item = TypeVar("Item")


def _fits_an_index(value: str) -> str:
    if len(value) > SHORT_TEXT_FAST_CHARACTERS:
        size = len(value.encode())
        if size > SHORT_TEXT_MAX_BYTES:
            raise ValueError(f"{size} bytes of UTF-8, over the limit of {SHORT_TEXT_MAX_BYTES} bytes")
    return value


ShortText = Annotated[str, AfterValidator(_fits_an_index)]
"""A name, key, version, tag or other text that an index holds."""

FilterValues = Annotated[list[Item], Field(max_length=FILTER_VALUES_MAX)]
"""The values of one filter list."""

Tags = Annotated[list[ShortText], Field(max_length=TAGS_MAX)]


def json_size(value: Any) -> int:
    """The size of `value` encoded as JSON, in bytes (non-ASCII characters counted as escapes: an upper bound)."""
    return len(json.dumps(value, default=str).encode())


def _fits_a_json_field(value: Any) -> Any:
    limit = get_settings().max_json_field_bytes
    if value is not None and (size := json_size(value)) > limit:
        raise ValueError(f"{size} bytes as JSON, over the limit of {limit} bytes (FLOWRUNS_MAX_JSON_FIELD_BYTES)")
    return value


JsonField = Annotated[Any, AfterValidator(_fits_a_json_field)]
"""Free-form JSON (state data): bounded by its encoded size."""
JsonObject = Annotated[dict[str, Any], AfterValidator(_fits_a_json_field)]
"""A free-form JSON object (`job_variables`, `context`, templates): bounded by its encoded size."""


def _fits_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    limit = get_settings().max_parameter_size_bytes
    if limit and (size := json_size(parameters)) > limit:
        raise ValueError(f"parameters are {size} bytes, over the limit of {limit} bytes")
    return parameters


SizedParameters = Annotated[dict[str, Any], AfterValidator(_fits_parameters)]
"""Run and deployment parameters: bounded by `FLOWRUNS_MAX_PARAMETER_SIZE_BYTES`, as Prefect's are."""

LabelValue = bool | int | float | str
Labels = Annotated[dict[ShortText, LabelValue], Field(max_length=LABELS_MAX), AfterValidator(_fits_a_json_field)]
"""Key-value labels: keys are short texts, at most `LABELS_MAX` of them, bounded in size."""
