"""Bounds on request values, so the database never refuses a value validation let through.

Short texts (names, keys, versions, tags, queue and pool names) go into btree indexes, whose
entries PostgreSQL caps at 2,704 bytes; the longest index holds two of them (a task run's
`flow_run_id, task_key, dynamic_key`), so each is at most 1,024 bytes of UTF-8. Free-form JSON
fields (`parameters`, `job_variables`, `context`, state data, labels, ...) are bounded by their
size as compact JSON (Prefect's measure of parameters), filter lists by their length (one
request's lists together stay far below the 65,535 parameters a PostgreSQL statement may carry).
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


FitsAnIndex = AfterValidator(_fits_an_index)
"""The byte bound of `ShortText`, for text types that add constraints of their own (names)."""

ShortText = Annotated[str, FitsAnIndex]
"""A name, key, version, tag or other text that an index holds."""

FilterValues = Annotated[list[Item], Field(max_length=FILTER_VALUES_MAX)]
"""The values of one filter list."""

Tags = Annotated[list[ShortText], Field(max_length=TAGS_MAX)]


def json_size(value: Any) -> int:
    """The size of `value` as compact JSON (no space after `,` or `:`, non-ASCII characters as
    `\\u` escapes), in bytes: what Prefect measures parameters by.

    The output is ASCII, so its length in characters is its length in bytes."""
    return len(json.dumps(value, separators=(",", ":"), default=str))


def _fits_a_json_field(value: Any) -> Any:
    limit = get_settings().max_json_field_bytes
    if value is not None and (size := json_size(value)) > limit:
        raise ValueError(
            f"{size} bytes as compact JSON, over the limit of {limit} bytes (FLOWRUNS_MAX_JSON_FIELD_BYTES)"
        )
    return value


JsonField = Annotated[Any, AfterValidator(_fits_a_json_field)]
"""Free-form JSON (state data): bounded by its encoded size."""
JsonObject = Annotated[dict[str, Any], AfterValidator(_fits_a_json_field)]
"""A free-form JSON object (`job_variables`, `context`, templates): bounded by its encoded size."""


def _fits_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    limit = get_settings().max_parameter_size_bytes
    if limit and parameters and (size := json_size(parameters)) > limit:
        raise ValueError(
            f"{size} bytes as compact JSON, over the limit of {limit} bytes (FLOWRUNS_MAX_PARAMETER_SIZE_BYTES)"
        )
    return parameters


SizedParameters = Annotated[dict[str, Any], AfterValidator(_fits_parameters)]
"""Run and deployment parameters, bounded as Prefect's are: at most `FLOWRUNS_MAX_PARAMETER_SIZE_BYTES`
(524,288) as compact JSON, the limit itself included; empty parameters and a limit of 0 are not measured."""

LabelValue = bool | int | float | str
Labels = Annotated[dict[ShortText, LabelValue], Field(max_length=LABELS_MAX), AfterValidator(_fits_a_json_field)]
"""Key-value labels: keys are short texts, at most `LABELS_MAX` of them, bounded in size."""
