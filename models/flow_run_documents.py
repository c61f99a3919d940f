"""Flow runs read as the JSON of their REST response, formatted by PostgreSQL.

Serialising a page of runs used to be most of a read: receiving 200 wide rows, decoding each
column into Python objects, building the responses and dumping them again. Here PostgreSQL
formats each run's values as JSON itself — one `json_build_array` per run of the values
`FlowRunResponse` carries, in field order, with the current state's values as a nested array —
and the worker receives one text per run, decodes it with orjson and names the values. The
result is what `FlowRunResponse.model_dump(mode="json")` gives, field for field, in field order:

- timestamps in pydantic's form (`2024-01-01T00:00:00Z`, microseconds only when not zero);
- durations as float seconds (`EXTRACT(EPOCH ...)` is numeric with six decimals: read as floats);
  the estimates (`estimated_run_time`, `estimated_start_time_delta`) computed as the ORM
  properties compute them, against the clock;
- the run's queue name and pool from its queue row, as `FlowRunResponse.set_work_queue` sets them;
- user JSON (parameters, context, labels, ...) as stored; a run whose user JSON holds a number
  beyond 64 bits is decoded by the standard library (orjson would round it to a float), as psycopg
  decodes JSON columns.

Arrays instead of objects: `json_build_object` costs PostgreSQL about twice as much per value
(the key is one more value to format), and the keys are the same for every run.

The objects stored through a pydantic column type (state details, empirical policy, created by)
were written as pydantic dumps them, so they are taken as stored, their keys put in the model's
order. Where validation would change a value — a stored object without exactly its model's
fields (a field added since, or one dropped), a Scheduled state without its time, the policy's
deprecated retry fields to back-fill, a run without a name — that part (the state, the policy,
the creator; the whole run for its name) is validated and dumped instead, as the ORM path would.

Only PostgreSQL formats the values; other databases serialise `read_flow_run_responses`.
"""

import functools
import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.dialects import postgresql

from models import orm
from models.json_codec import decode_exact_integers
from models.schemas.core import CreatedBy, FlowRunPolicy, backfill_deprecated_retry_fields
from models.schemas.responses import STATE_FIELDS, FlowRunJson, FlowRunResponse
from models.schemas.states import TERMINAL_STATES, State, StateDetails, StateType
from models.types import Timestamp

RESPONSE_FIELDS = tuple(FlowRunResponse.model_fields)
"""The order of a run's values (its `state` one of them, as the state's values in `STATE_FIELDS` order)."""
_POLICY_FIELDS = tuple(FlowRunPolicy.model_fields)
_CREATED_BY_FIELDS = tuple(CreatedBy.model_fields)
_DETAILS_FIELDS = tuple(StateDetails.model_fields)
_SCHEDULED = StateType.SCHEDULED.value

_runs: sa.Table = orm.FlowRun.__table__  # type: ignore[assignment]
# Aliased: the related-row filters are EXISTS on the state, queue and pool tables, which must not
# correlate to these joins.
_state = orm.FlowRunState.__table__.alias("document_state")
_queue = orm.WorkQueue.__table__.alias("document_queue")
_pool = orm.WorkPool.__table__.alias("document_pool")

_PYDANTIC_TIMESTAMP = sa.literal_column("""'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'""")
_ZERO_MICROSECONDS = sa.literal_column("'.000000Z'")
_UTC = sa.literal_column("'UTC'")
_NO_INTERVAL = sa.literal_column("interval '0'")
_BIG_NUMBER = sa.literal_column(
    """'strict $.** ? (@.type() == "number" && (@ >= 9223372036854775807 || @ <= -9223372036854775808))'"""
)
"""A jsonpath matching any number that may not fit 64 bits (the bounds themselves included)."""


def document_query() -> sa.Select[Any]:
    """`(values, has_big_numbers)` of every run, the run's columns in scope for filters and sorts:
    page it as any query on `flow_run`."""
    joined = (
        _runs.outerjoin(_state, _state.c.id == _runs.c.state_id)
        .outerjoin(_queue, _queue.c.id == _runs.c.work_queue_id)
        .outerjoin(_pool, _pool.c.id == _queue.c.work_pool_id)
    )
    return sa.select(*_selected_columns()).select_from(joined)


def documents(rows: Iterable[sa.Row[Any]]) -> list[FlowRunJson]:
    """The JSON of each run of `document_query` rows."""
    return [
        _document(json.loads(values) if has_big_numbers else decode_exact_integers(values))
        for values, has_big_numbers in rows
    ]


def _document(values: list[Any]) -> FlowRunJson:
    """The run's response JSON from its values (see the module's docstring)."""
    document = FlowRunJson(zip(RESPONSE_FIELDS, values))
    if (state := document["state"]) is not None:
        document["state"] = dict(zip(STATE_FIELDS, state))
    if not document["name"]:
        return _validated(FlowRunResponse, document)  # validation names the run
    document["empirical_policy"] = _policy_json(document["empirical_policy"])
    if (created_by := document["created_by"]) is not None:
        document["created_by"] = _stored(CreatedBy, _CREATED_BY_FIELDS, created_by)
    if document["state"] is not None:
        document["state"] = _state_json(document["state"])
    return document


def _policy_json(policy: Any) -> Any:
    """The empirical policy as validation gives it: its validator back-fills deprecated fields."""
    if _has_exactly(policy, _POLICY_FIELDS) and backfill_deprecated_retry_fields(policy) == policy:
        return _in_field_order(_POLICY_FIELDS, policy)
    return _validated(FlowRunPolicy, policy)


def _state_json(state: dict[str, Any]) -> Any:
    """The state as validation gives it: a Scheduled state without its time is given the clock's."""
    details = state["state_details"]
    if not _has_exactly(details, _DETAILS_FIELDS) or (state["type"] == _SCHEDULED and not details["scheduled_time"]):
        return _validated(State, state)
    state["state_details"] = _in_field_order(_DETAILS_FIELDS, details)
    return state


def _stored(model: type[BaseModel], fields: tuple[str, ...], value: Any) -> Any:
    """A stored pydantic object: as stored if it has exactly its model's fields, validated otherwise."""
    return _in_field_order(fields, value) if _has_exactly(value, fields) else _validated(model, value)


def _validated(model: type[BaseModel], value: Any) -> Any:
    validated = model.model_validate(value).model_dump(mode="json")
    return FlowRunJson(validated) if model is FlowRunResponse else validated


def _has_exactly(value: Any, fields: tuple[str, ...]) -> bool:
    return type(value) is dict and value.keys() == _field_set(fields)


@functools.cache
def _field_set(fields: tuple[str, ...]) -> frozenset[str]:
    return frozenset(fields)


def _in_field_order(fields: tuple[str, ...], stored: dict[str, Any]) -> dict[str, Any]:
    """A stored object's values in its model's field order (jsonb keeps keys in its own order)."""
    return {name: stored[name] for name in fields}


@functools.cache
def _selected_columns() -> tuple[sa.ColumnElement[Any], sa.ColumnElement[Any]]:
    """The run's values as JSON text (text, so that it reaches us undecoded) and whether its user
    JSON holds a number beyond 64 bits, each rendered to SQL once: as one literal column apiece,
    executing them costs no per-call cache-key walk of the expressions inside."""
    values = sa.cast(_array([_run_value(name) for name in RESPONSE_FIELDS]), sa.Text)
    user_json = (_runs.c.parameters, _runs.c.context, _runs.c.labels, _runs.c.job_variables, _state.c.data)
    has_big_numbers = sa.or_(*(sa.func.jsonb_path_exists(column, _BIG_NUMBER) for column in user_json))
    return (
        sa.literal_column(_sql(values), sa.Text).label("run_values"),
        sa.literal_column(_sql(sa.func.coalesce(has_big_numbers, False)), sa.Boolean).label("has_big_numbers"),
    )


def _sql(expression: sa.ColumnElement[Any]) -> str:
    return str(expression.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))


def _array(values: list[sa.ColumnElement[Any]]) -> sa.ColumnElement[Any]:
    return sa.func.json_build_array(*values)


def _run_value(name: str) -> sa.ColumnElement[Any]:
    """The SQL of one `FlowRunResponse` field."""
    has_queue = _queue.c.id.is_not(None)
    if name == "estimated_run_time":
        return _seconds(_estimated_run_time())
    if name == "estimated_start_time_delta":
        return _seconds(_estimated_start_time_delta())
    if name == "work_queue_name":
        return sa.case((has_queue, _queue.c.name), else_=_runs.c.work_queue_name)
    if name == "labels":  # a response always carries labels
        return sa.func.coalesce(_runs.c.labels, sa.literal_column("'{}'::jsonb"))
    if name == "work_pool_id":
        return _queue.c.work_pool_id
    if name == "work_pool_name":
        return _pool.c.name
    if name == "state":
        state_values = _array([_json_value(_state.c[field]) for field in STATE_FIELDS])
        return sa.case((_state.c.id.is_(None), sa.null()), else_=state_values)
    return _json_value(_runs.c[name])


def _json_value(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """A column as its response field serialises it (a JSON column as stored)."""
    if isinstance(column.type, Timestamp):
        return _timestamp(column)
    if isinstance(column.type, sa.Interval):
        return _seconds(column)
    return column


def _timestamp(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """pydantic's JSON form of a UTC timestamp: `Z`, and microseconds only when they are not zero."""
    text = sa.func.to_char(sa.func.timezone(_UTC, column), _PYDANTIC_TIMESTAMP)
    return sa.func.replace(text, _ZERO_MICROSECONDS, sa.literal_column("'Z'"))


def _seconds(interval: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """An interval as float seconds (numeric with six decimals since PostgreSQL 14: a float in JSON)."""
    return sa.extract("epoch", interval)


def _estimated_run_time() -> sa.ColumnElement[Any]:
    """`RunColumns.estimated_run_time`: a RUNNING run's clock includes its time in the current state."""
    running = sa.and_(_runs.c.state_type == StateType.RUNNING, _runs.c.state_timestamp.is_not(None))
    since = sa.func.clock_timestamp() - _runs.c.state_timestamp
    return sa.case((running, _runs.c.total_run_time + since), else_=_runs.c.total_run_time)


def _estimated_start_time_delta() -> sa.ColumnElement[Any]:
    """`RunColumns.estimated_start_time_delta`: how late the run started, or is."""
    expected, started = _runs.c.expected_start_time, _runs.c.start_time
    now = sa.func.clock_timestamp()
    not_terminal = sa.or_(_runs.c.state_type.is_(None), _runs.c.state_type.not_in(sorted(TERMINAL_STATES)))
    return sa.case(
        (expected.is_(None), _NO_INTERVAL),
        (started.is_not(None), sa.func.greatest(started - expected, _NO_INTERVAL)),
        (sa.and_(expected < now, not_terminal), now - expected),
        else_=_NO_INTERVAL,
    )
