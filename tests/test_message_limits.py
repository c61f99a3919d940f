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

from tasks.admission import admit
from tasks.message_limits import TASK_ID_MAX_LENGTH, MessageLimits, MessageRefused, check_value, heaviest_path

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
