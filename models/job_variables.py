"""A deployment run's job variables checked against its work pool's variables schema, as Prefect's
API checks them when a run's job variables are updated.

The pool's `base_job_template["variables"]` is a JSON Schema (as pydantic writes it). The values
checked are the schema's own defaults (those that are valid; a default referring to a block is
left out, there are no blocks here), overlaid with the deployment's job variables, then the run's.
Every required variable must then be present, unless a default had to be left out as invalid
(the value it would have given is unknown). As Prefect does, the schema is first adjusted for what
pydantic v1 wrote: an optional property accepts null, and a list of `items` is read as
`prefixItems`. A pool without a template, or a template without variables, checks nothing.

A pool's own defaults are checked the same way when the pool is created (`check_variable_defaults`).
"""

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema
import referencing
from jsonschema.exceptions import SchemaError
from jsonschema.exceptions import ValidationError as SchemaViolation
from referencing.exceptions import Unresolvable

from models.errors import ValidationError

FIELD = "flow_run.job_variables"
VALIDATOR = jsonschema.Draft202012Validator
"""The JSON Schema draft pydantic writes and Prefect validates with."""


def check_job_variables(
    base_job_template: dict[str, Any] | None, deployment_variables: dict[str, Any] | None,
    run_variables: dict[str, Any] | None,
) -> None:
    """`ValidationError` naming `flow_run.job_variables` unless the merged variables satisfy the
    template's variables schema (see the module docstring)."""
    schema = _variables_schema(base_job_template, FIELD)
    if schema is None:
        return
    defaults, some_invalid = _valid_defaults(schema)
    merged = {**defaults}
    for variables in (deployment_variables, run_variables):
        if isinstance(variables, dict):
            merged.update(variables)
    adjusted = _accepting_null_when_optional(schema)
    if some_invalid:
        adjusted = _without_required(adjusted)
    problem = _first_violation(merged, adjusted)
    if problem is not None:
        raise ValidationError(f"{FIELD}: Error updating flow run: {problem}")


def check_variable_defaults(base_job_template: dict[str, Any] | None) -> None:
    """`ValidationError` naming `work_pool.base_job_template` unless every default its variables
    schema gives satisfies that schema (required properties need no default), as Prefect's API
    checks a pool's template when the pool is created."""
    field = "work_pool.base_job_template"
    schema = _variables_schema(base_job_template, field)
    if schema is None:
        return
    problem = _first_violation(dict(_defaults(schema)), _without_required(_accepting_null_when_optional(schema)))
    if problem is not None:
        raise ValidationError(f"{field}: Validation failed for work pool's job variable defaults: {problem}")


def _variables_schema(base_job_template: dict[str, Any] | None, field: str) -> dict[str, Any] | None:
    """The template's variables schema (None when it has none), refused when it is no valid schema."""
    schema = (base_job_template or {}).get("variables")
    if not schema:
        return None
    try:
        VALIDATOR.check_schema(schema)
    except SchemaError as error:
        raise ValidationError(f"{field}: the work pool's variables schema is invalid: {error.message}") from None
    return schema  # type: ignore[no-any-return]


def _defaults(schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Each property's default, but one naming a block document (`{"$ref": ...}`): there are no
    blocks here to read it from."""
    for name, attributes in (schema.get("properties") or {}).items():
        if not isinstance(attributes, dict) or "default" not in attributes:
            continue
        default = attributes["default"]
        if not (isinstance(default, dict) and "$ref" in default):
            yield name, default


def _first_violation(instance: dict[str, Any], schema: dict[str, Any]) -> str | None:
    """The message Prefect gives for the most relevant violation, or None when there is none.
    References stay inside the schema: nothing is fetched."""
    validator = VALIDATOR(schema, registry=referencing.Registry(), format_checker=VALIDATOR.FORMAT_CHECKER)
    try:
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    except Unresolvable as unresolvable:
        return f"Validation failed. Failure reason: {unresolvable}"
    if error is None:
        return None
    return f"{_where(error)} Failure reason: {error.message}"


def _where(error: SchemaViolation) -> str:
    path = error.json_path
    return "Validation failed." if path == "$" else f"Validation failed for field {path.removeprefix('$.')!r}."


def _valid_defaults(schema: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Each property's default that satisfies the schema (checked alone, required ignored), and
    whether any default was left out as invalid. Block references are left out silently."""
    relaxed = _without_required(schema)
    defaults: dict[str, Any] = {}
    some_invalid = False
    for name, default in _defaults(schema):
        if _first_violation({name: default}, relaxed) is None:
            defaults[name] = default
        else:
            some_invalid = True
    return defaults, some_invalid


def _accepting_null_when_optional(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy in which every property that is not required (and has a single `type`) accepts null
    too, and a list of `items` is `prefixItems`, in nested objects and definitions alike."""
    adjusted = copy.deepcopy(schema)
    _adjust_properties(adjusted)
    for definition in (adjusted.get("definitions") or {}).values():
        if isinstance(definition, dict):
            _adjust_properties(definition)
    return adjusted


def _adjust_properties(schema: dict[str, Any]) -> None:
    required = schema.get("required") or []
    for name, property_schema in (schema.get("properties") or {}).items():
        if not isinstance(property_schema, dict):
            continue
        if name not in required and "type" in property_schema and property_schema["type"] != "null":
            property_schema["anyOf"] = [{"type": property_schema.pop("type")}, {"type": "null"}]
        items = property_schema.get("items")
        if isinstance(items, list) and items and not property_schema.get("prefixItems"):
            property_schema["prefixItems"] = property_schema.pop("items")
        if "properties" in property_schema:
            _adjust_properties(property_schema)


def _without_required(value: Any) -> Any:
    """A copy with every `required` list removed, at any depth."""
    if isinstance(value, dict):
        return {key: _without_required(item) for key, item in value.items() if key != "required"}
    if isinstance(value, list):
        return [_without_required(item) for item in value]
    return value
