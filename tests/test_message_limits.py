"""The door's checks, without a worker: what a message may hold, and what is refused with which words."""

import datetime
import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kombu.exceptions import ContentDisallowed
from kombu.serialization import loads

from models.settings import Settings
from tasks.admission import admit
from tasks.message_limits import (
    TASK_ID_MAX_LENGTH,
    MessageLimits,
    MessageRefused,
    check_kwargs,
    check_value,
    heaviest_path,
)

LIMITS = MessageLimits(max_bytes=10_000, max_depth=8, max_string_length=100, max_list_length=20, max_object_keys=20)
VISIBILITY = datetime.timedelta(seconds=1800)


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


def refusal(value: Any, root: str = "") -> str:
    with pytest.raises(MessageRefused) as refused:
        check_value(LIMITS, value, root)
    return str(refused.value)


def test_a_body_within_every_limit_passes() -> None:
    check_value(LIMITS, {"flow_run": {"name": "x" * 100, "tags": list(range(20)), "parameters": {"a": nested(5)}}}, "")


def test_depth_counts_containers_and_names_the_path() -> None:
    check_value(LIMITS, {"a": nested(7)}, "")  # 8 levels: the object and seven lists
    message = refusal({"flow_run": {"parameters": {"x": nested(20)}}})
    assert message.startswith("flow_run.parameters.x.0.0.0.0.0")
    assert "nested more than 8 levels deep (FLOWRUNS_MAX_MESSAGE_DEPTH)" in message


def test_long_paths_are_elided() -> None:
    deep_limits = MessageLimits(max_bytes=10_000, max_depth=50, max_string_length=100, max_list_length=20,
                                max_object_keys=20)
    with pytest.raises(MessageRefused) as refused:
        check_value(deep_limits, {"a": nested(200)}, "")
    assert str(refused.value).startswith("a.0.0.0.0.0.0.0... (42 levels more): nested more than 50 levels deep")


def test_strings_lists_and_keys_have_limits_naming_the_setting() -> None:
    assert refusal({"state": {"name": "s" * 101}}) == (
        "state.name: a string of 101 characters, over the limit of 100 (FLOWRUNS_MAX_STRING_LENGTH)"
    )
    assert refusal({"f": {"any_": list(range(21))}}) == "f.any_: 21 items, over the limit of 20 (FLOWRUNS_MAX_LIST_LENGTH)"
    assert refusal({"labels": {str(i): i for i in range(21)}}) == (
        "labels: 21 keys, over the limit of 20 (FLOWRUNS_MAX_OBJECT_KEYS)"
    )


def test_a_long_key_is_refused_and_cut_in_the_message() -> None:
    message = refusal({"k" * 500: 1})
    assert "a string of 500 characters" in message and message.index(":") < 80


def test_the_root_names_where_the_value_sits() -> None:
    assert refusal(["x" * 101], "args").startswith("args.0: a string")
    assert refusal("x" * 101, "headers").startswith("headers: a string")


def test_the_heaviest_path_names_the_field_holding_most_of_a_body() -> None:
    body = {"flow_run": {"flow_id": str(uuid.uuid4()), "name": "x" * 5000, "tags": ["a"]}}
    assert heaviest_path(body, "", 8) == "flow_run.name"
    spread = {"a": "x" * 100, "b": "y" * 100, "c": "z" * 100}
    assert heaviest_path(spread, "", 8) == "body"


@settings(max_examples=60, deadline=None)
@given(depth=st.integers(min_value=1, max_value=3000), width=st.integers(min_value=0, max_value=3000))
def test_the_walk_never_recurses_past_its_limit(depth: int, width: int) -> None:
    """Any depth is answered without a RecursionError: the walk stops at the limit."""
    value = {"p": [nested(depth)] + list(range(width))}
    deep_enough = depth + 2 > LIMITS.max_depth
    wide_enough = width + 1 > LIMITS.max_list_length
    if deep_enough or wide_enough:
        with pytest.raises(MessageRefused):
            check_value(LIMITS, value, "")
    else:
        check_value(LIMITS, value, "")


# ------------------------------------------------------------------------------- the door


class FakeMessage:
    """What the door reads of a kombu message."""

    def __init__(self, body: bytes, headers: dict[str, Any] | None = None, content_type: str = "application/json"):
        self.body = body
        self.headers = headers if headers is not None else {"task": "flow_runs.count_flow_runs", "id": str(uuid.uuid4())}
        self.content_type = content_type

    def decode(self) -> Any:
        return loads(self.body, self.content_type, "utf-8", accept={"application/json"})


def protocol_2(kwargs: Any, **headers: Any) -> FakeMessage:
    body = json.dumps([[], kwargs, {"callbacks": None}]).encode()
    return FakeMessage(body, {"task": "flow_runs.count_flow_runs", "id": str(uuid.uuid4()), **headers})


def door_refusal(message: FakeMessage, body: Any = None) -> str:
    with pytest.raises(MessageRefused) as refused:
        admit(LIMITS, VISIBILITY, message, body)
    return str(refused.value)


def test_an_ordinary_message_is_admitted() -> None:
    admit(LIMITS, VISIBILITY, protocol_2({"flow_run_filter": {"state": {"type": {"any_": ["RUNNING"]}}}}), None)


def test_an_oversized_message_names_the_field_that_makes_it_too_big() -> None:
    message = protocol_2({"flow_run": {"flow_id": str(uuid.uuid4()), "name": "x" * 20_000}})
    assert door_refusal(message) == (
        f"flow_run.name: the message is {len(message.body)} bytes, over the limit of 10000 bytes "
        "(FLOWRUNS_MAX_MESSAGE_BYTES); flow_run.name holds most of it"
    )


def test_a_message_far_over_the_limit_is_refused_without_being_decoded() -> None:
    message = protocol_2({"flow_run": {"name": "x" * 400_000}})
    message.decode = None  # type: ignore[assignment,method-assign]  # decoding it would fail the test
    assert door_refusal(message).startswith("body: the message is")


def test_a_body_too_deep_to_decode_is_refused() -> None:
    body = b'[[], {"p": ' + b"[" * 100_000 + b"]" * 100_000 + b"}, {}]"
    message = FakeMessage(body)
    large = MessageLimits(max_bytes=10_000_000, max_depth=8, max_string_length=100, max_list_length=20,
                          max_object_keys=20)
    with pytest.raises(MessageRefused, match="body: nested too deep to decode"):
        admit(large, VISIBILITY, message, None)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'"just a string"', "body: not a Celery protocol 2 body"),
        (b"[[], {}]", "body: not a Celery protocol 2 body"),
        (b'[{}, {}, {}]', "args: must be a list"),
        (b'[[], [], {}]', "kwargs: must be an object"),
        (b'[[], {}, 5]', "embed: must be an object"),
        (b'[[], {"a": ', "body: cannot be decoded as JSON"),
    ],
)
def test_a_body_of_the_wrong_shape_is_refused(body: bytes, expected: str) -> None:
    assert door_refusal(FakeMessage(body)).startswith(expected)


def test_a_pickle_message_is_left_to_celery_to_refuse() -> None:
    with pytest.raises(ContentDisallowed):
        admit(LIMITS, VISIBILITY, FakeMessage(b"\x80\x04N.", content_type="application/x-python-serialize"), None)


@pytest.mark.parametrize("task_id", [None, 5, "", "t" * (TASK_ID_MAX_LENGTH + 1)])
def test_a_task_id_must_be_a_short_string(task_id: Any) -> None:
    message = protocol_2({})
    message.headers["id"] = task_id
    assert door_refusal(message).startswith("headers.id: the task id must be a string")


def test_headers_are_bounded_too() -> None:
    assert door_refusal(protocol_2({}, kwargsrepr="r" * 101)).startswith("headers.kwargsrepr: a string of 101")


def test_an_eta_beyond_the_visibility_timeout_is_refused() -> None:
    soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=60)).isoformat()
    admit(LIMITS, VISIBILITY, protocol_2({}, eta=soon), None)
    far = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=3)).isoformat()
    assert door_refusal(protocol_2({}, eta=far)).startswith("headers.eta: more than 1800 s ahead")


def test_a_protocol_1_message_is_checked_whole() -> None:
    task_id = str(uuid.uuid4())
    message = FakeMessage(b"", headers={})
    admit(LIMITS, VISIBILITY, message, {"task": "flow_runs.count_flow_runs", "id": task_id, "args": [], "kwargs": {}})
    deep = {"task": "flow_runs.count_flow_runs", "id": task_id, "args": [], "kwargs": {"p": nested(20)}}
    assert door_refusal(message, deep).startswith("body.kwargs.p.0")


# ------------------------------------------------------------- parameters and job_variables

WIDE = {"s": "x" * 1000, "l": list(range(100)), "k" * 500: 1, **{f"k{i}": i for i in range(100)}}
"""Over every per-value limit of LIMITS (a string, a list, a key, an object), and within its depth."""


def kwargs_refusal(kwargs: Any) -> str:
    with pytest.raises(MessageRefused) as refused:
        check_kwargs(LIMITS, kwargs, "")
    return str(refused.value)


def test_parameters_and_job_variables_are_bounded_by_depth_only() -> None:
    check_kwargs(LIMITS, {"flow_run": {"parameters": WIDE, "job_variables": {"env": [WIDE]}}}, "")
    check_kwargs(LIMITS, {"flow_run_id": "r", "flow_run": {"parameters": {"x": ["y" * 5000]}}}, "")
    check_kwargs(LIMITS, {"deployment": {"parameters": WIDE, "job_variables": WIDE}}, "")


def test_the_depth_bound_holds_inside_parameters() -> None:
    message = kwargs_refusal({"flow_run": {"parameters": {"x": nested(20)}}})
    assert message.startswith("flow_run.parameters.x.0.0.0.0.0")
    assert "nested more than 8 levels deep (FLOWRUNS_MAX_MESSAGE_DEPTH)" in message
    assert kwargs_refusal({"flow_run": {"job_variables": {"k": {"k": {"k": {"k": {"k": {"k": {}}}}}}}}}).startswith(
        "flow_run.job_variables.k.k.k.k.k.k: nested more than 8 levels deep"
    )


def test_every_other_part_of_a_body_keeps_the_per_value_bounds() -> None:
    assert kwargs_refusal({"flow_run": {"context": {"s": "x" * 101}}}) == (
        "flow_run.context.s: a string of 101 characters, over the limit of 100 (FLOWRUNS_MAX_STRING_LENGTH)"
    )
    assert kwargs_refusal({"flow_run": {"labels": {str(i): i for i in range(21)}}}).startswith("flow_run.labels: 21 keys")
    assert kwargs_refusal({"flow_run_filter": {"id": {"any_": list(range(21))}}}).startswith(
        "flow_run_filter.id.any_: 21 items"
    )
    # Only a body's own field is free-form: the same name anywhere else is counted.
    assert kwargs_refusal({"flow_run": {"context": {"parameters": {"s": "x" * 101}}}}).startswith(
        "flow_run.context.parameters.s: a string of 101"
    )
    assert kwargs_refusal({"parameters": "x" * 101}).startswith("parameters: a string of 101")
    assert kwargs_refusal({"flow_run": {"parameters": {}, "name": "x" * 101}}).startswith("flow_run.name: a string")


def test_parameters_at_the_door_are_free_form_in_protocol_1_too() -> None:
    message = FakeMessage(b"", headers={})
    body = {"task": "flow_runs.create_flow_run", "id": str(uuid.uuid4()), "args": [],
            "kwargs": {"flow_run": {"flow_id": str(uuid.uuid4()), "parameters": WIDE}}}
    admit(LIMITS, VISIBILITY, message, body)
    body["kwargs"]["flow_run"]["context"] = {"s": "x" * 101}
    assert door_refusal(message, body).startswith("body.kwargs.flow_run.context.s: a string of 101")
    body["args"] = [{"parameters": WIDE}]
    assert door_refusal(message, body).startswith("body.args.0.parameters")


# With the default settings, the parameters Prefect takes (at most 524,288 bytes as compact JSON)
# pass the door, whatever their shape, as long as they nest no deeper than the limit.

DEFAULT_LIMITS = MessageLimits.from_settings(Settings())
PREFECT_MAX_PARAMETER_SIZE = 524_288


def compact_size(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":")))


def padded_to(size: int, parameters: dict[str, Any]) -> dict[str, Any]:
    """`parameters` with a `pad` string making them exactly `size` bytes as compact JSON."""
    padded = {**parameters, "pad": ""}
    padded["pad"] = "p" * (size - compact_size(padded))
    assert compact_size(padded) == size
    return padded


PREFECT_TAKES = {
    "a string of 200,000 characters": {"x": "a" * 200_000},
    "a list of 20,000 items": {"x": list(range(20_000))},
    "12,000 keys (510 KB)": {f"k{i:05d}": "v" * 30 for i in range(12_000)},
    "42,000 keys (462,001 bytes)": {f"k{i:05d}": i % 10 for i in range(42_000)},
    "the limit in one string": padded_to(PREFECT_MAX_PARAMETER_SIZE, {}),
    "the limit in zeros": padded_to(PREFECT_MAX_PARAMETER_SIZE, {"x": [0] * 262_000}),
    "the limit in small objects": padded_to(PREFECT_MAX_PARAMETER_SIZE, {"x": [{"a": 0}] * 65_000}),
}


@pytest.mark.parametrize("parameters", list(PREFECT_TAKES.values()), ids=list(PREFECT_TAKES))
def test_any_parameters_prefect_takes_pass_the_door(parameters: dict[str, Any]) -> None:
    assert compact_size(parameters) <= PREFECT_MAX_PARAMETER_SIZE
    flow_id = str(uuid.uuid4())
    admit(DEFAULT_LIMITS, VISIBILITY, protocol_2({"flow_run": {"flow_id": flow_id, "parameters": parameters}}), None)
    admit(DEFAULT_LIMITS, VISIBILITY, protocol_2({"flow_run_id": flow_id, "flow_run": {"parameters": parameters}}),
          None)
    admit(DEFAULT_LIMITS, VISIBILITY, protocol_2({"deployment": {"name": "d", "flow_id": flow_id,
                                                                  "parameters": parameters}}), None)


def test_the_largest_parameters_and_job_variables_fit_one_message() -> None:
    """Zeros are the costliest shape as Celery encodes JSON (a space after each comma: 1.5 times
    the compact size); the largest such parameters and job_variables still fit, with the rest."""
    largest = padded_to(PREFECT_MAX_PARAMETER_SIZE, {"x": [0] * 262_000})
    message = protocol_2({"flow_run": {
        "flow_id": str(uuid.uuid4()), "name": "n" * 1024, "parameters": largest, "job_variables": largest,
        "tags": ["t" * 100] * 100, "labels": {f"l{i}": "v" * 100 for i in range(100)},
    }})
    assert len(message.body) > 1.4 * 2 * PREFECT_MAX_PARAMETER_SIZE
    admit(DEFAULT_LIMITS, VISIBILITY, message, None)


def test_the_same_values_elsewhere_in_a_body_are_still_refused() -> None:
    flow_id = str(uuid.uuid4())
    context = door_refusal_with_defaults({"flow_run": {"flow_id": flow_id, "context": {"x": "a" * 200_000}}})
    assert context == (
        "flow_run.context.x: a string of 200000 characters, over the limit of 100000 (FLOWRUNS_MAX_STRING_LENGTH)"
    )
    ids = door_refusal_with_defaults({"flow_run_filter": {"id": {"any_": [flow_id] * 20_000}}})
    assert ids == "flow_run_filter.id.any_: 20000 items, over the limit of 10000 (FLOWRUNS_MAX_LIST_LENGTH)"


def test_a_message_over_the_size_limit_is_refused_whatever_field_holds_it() -> None:
    message = protocol_2({"flow_run": {"flow_id": str(uuid.uuid4()), "parameters": {"x": "p" * 3_000_000}}})
    refusal = door_refusal_with_defaults(message)
    assert refusal.startswith(f"flow_run.parameters.x: the message is {len(message.body)} bytes, over the limit "
                              "of 2097152 bytes (FLOWRUNS_MAX_MESSAGE_BYTES)")


def door_refusal_with_defaults(kwargs_or_message: Any) -> str:
    message = kwargs_or_message if isinstance(kwargs_or_message, FakeMessage) else protocol_2(kwargs_or_message)
    with pytest.raises(MessageRefused) as refused:
        admit(DEFAULT_LIMITS, VISIBILITY, message, None)
    return str(refused.value)
