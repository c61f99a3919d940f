"""The wire contract as data: a JSON Schema for every task's kwargs and result.

Generated from the pydantic models the worker validates with and the handlers' return types, so
it cannot say other than what the worker does. `flowruns contract` prints it; `docs/contract.json`
is a copy that a test keeps equal to it, for producers in other languages to generate clients from
or validate against.
"""

import inspect
import json
from typing import Any, get_type_hints

from pydantic import TypeAdapter

from models.schemas.responses import OrchestrationResult
from models.settings import get_settings
from tasks.base import FlowrunsTask

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

ERRORS = {
    "ObjectNotFoundError": "an unknown id or name; not retried",
    "ValidationError": "a body or value refused (the message names the field and, for a bound, the limit); "
                       "not retried, nothing written",
    "InvalidRequestError": "a valid read that ran longer than FLOWRUNS_READ_TIMEOUT_SECONDS; not retried",
    "FlowRunGraphTooLarge": "a run graph over its node limit",
    "PoisonMessageError": "a message whose worker process died FLOWRUNS_MAX_WORKER_LOSSES times; parked",
}
"""The error classes a FAILURE result may carry, besides a lost connection retried until exhausted."""

FAILURE_RESULT = {
    "type": "object",
    "description": "A FAILURE's result as the JSON result backend stores it.",
    "properties": {
        "exc_type": {"type": "string", "description": "the error's class name (see `errors`)"},
        "exc_message": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
        "exc_module": {"type": "string"},
    },
    "required": ["exc_type", "exc_message"],
}

MAINTENANCE_RESULTS: dict[str, Any] = {
    "maintenance.reconcile_concurrency_slots": dict[str, int],
    "maintenance.mark_late_runs": int,
    "maintenance.prune_processed_requests": int,
    "maintenance.fail_expired_pauses": int,
    "maintenance.clean_up_cancelled_runs": dict[str, int],
}
"""Beat's tasks take no kwargs; each returns what it changed."""


def contract_document() -> dict[str, Any]:
    """The whole contract: queues, error classes and, per task, the schema of its kwargs and result
    (each referring to the shared definitions in `$defs`)."""
    from tasks import app  # with every task registered

    settings = get_settings()
    entries: dict[str, dict[str, Any]] = {}
    schemas: list[tuple[tuple[str, str], Any, TypeAdapter[Any]]] = []
    for name, task in sorted(app.tasks.items()):
        if isinstance(task, FlowrunsTask):
            spec = task.spec
            entries[name] = {"description": _first_line(spec.handler.__doc__), "queue": settings.task_queue,
                             "state_changing": spec.recorded}
            schemas.append(((name, "kwargs"), "validation", TypeAdapter(spec.body)))
            returned = OrchestrationResult if spec.transition else get_type_hints(spec.handler)["return"]
            schemas.append(((name, "result"), "serialization", TypeAdapter(returned)))
        elif name in MAINTENANCE_RESULTS:
            entries[name] = {"description": _first_line(task.__doc__), "queue": settings.maintenance_queue,
                             "state_changing": True,
                             "kwargs": {"type": "object", "properties": {}, "additionalProperties": False}}
            schemas.append(((name, "result"), "serialization", TypeAdapter(MAINTENANCE_RESULTS[name])))
    generated, shared = TypeAdapter.json_schemas(schemas)
    for (key, _mode), schema in generated.items():
        name, part = key
        entries[name][part] = schema
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "title": "flowruns wire contract",
        "description": "Send each task by name with JSON keyword arguments (app.send_task(name, kwargs=..., "
                       "task_id=..., queue=...)); read the JSON result from the result backend. Re-send a "
                       "request under the same task id when no result arrives: the effect happens once. "
                       "Each task's `kwargs` and `result` schema refers to the definitions in `$defs`.",
        "queue": settings.task_queue,
        "errors": ERRORS,
        "failure_result": FAILURE_RESULT,
        "tasks": entries,
        "$defs": shared.get("$defs", {}),
    }


def _first_line(text: str | None) -> str:
    return inspect.cleandoc(text or "").split("\n\n")[0].replace("\n", " ")


def contract_json() -> str:
    """The document as the repository keeps it (sorted keys, two-space indent, a final newline)."""
    return json.dumps(contract_document(), indent=2, sort_keys=True) + "\n"
