"""kombu's `json` serializer is orjson's, and it encodes and decodes what kombu's json did, as kombu's
json did (tasks/json_serializer.py): the values a message or result carries, and the errors a
message that is not strict JSON gets."""

import datetime
import decimal
import json
import uuid
from typing import Any

import pytest
from kombu.exceptions import DecodeError, EncodeError
from kombu.serialization import dumps as kombu_dumps
from kombu.serialization import loads as kombu_loads
from kombu.utils import json as kombu_json

import tasks.worker_app  # noqa: F401  (registers the serializer)
from tasks import json_serializer

NOW = datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)


def through_kombu(value: Any) -> Any:
    content_type, encoding, payload = kombu_dumps(value, serializer="json")
    assert (content_type, encoding) == ("application/json", "utf-8")
    return kombu_loads(payload, content_type, encoding, accept={"application/json"})


@pytest.mark.parametrize(
    "value",
    [
        {"flow_run_id": str(uuid.uuid4()), "state": {"type": "RUNNING", "name": "naïve ✓ \n\t\x01"}, "force": False},
        [[], {"offset": 0, "limit": 200, "x": [1.5, -0.0, 1e-7, 1e300, None, True]}, {"callbacks": None}],
        {"big": 2**70, "negative": -(2**65), "edge": 2**63 - 1},
        {"when": NOW, "day": NOW.date(), "at": NOW.time(), "amount": decimal.Decimal("1.10"), "raw": b"bytes"},
        {1: "int key", None: "none key", True: "bool key"},
        {"deep": json.loads("[" * 300 + "]" * 300)},
    ],
    ids=["task kwargs", "protocol 2 body", "big integers", "kombu types", "non-string keys", "300 levels"],
)
def test_values_round_trip_as_with_kombus_json(value: Any) -> None:
    expected = kombu_json.loads(kombu_json.dumps(value))
    assert through_kombu(value) == expected
    assert json_serializer.loads(json_serializer.dumps(value)) == expected


def test_kombu_types_keep_kombus_envelope() -> None:
    encoded = json.loads(json_serializer.dumps({"when": NOW, "amount": decimal.Decimal("2.5")}))
    assert encoded == {"when": {"__type__": "datetime", "__value__": NOW.isoformat()},
                       "amount": {"__type__": "decimal", "__value__": "2.5"}}


def test_the_documented_differences() -> None:
    """A UUID object is sent as its string; a NaN as null (kombu's json sent the non-standard NaN)."""
    value = uuid.uuid4()
    assert json.loads(json_serializer.dumps({"id": value, "x": float("nan")})) == {"id": str(value), "x": None}


def test_what_neither_can_encode_fails_as_before() -> None:
    with pytest.raises(EncodeError):
        kombu_dumps({"a": object()}, serializer="json")
    with pytest.raises(TypeError):
        json_serializer.dumps({"a": {1, 2}})


@pytest.mark.parametrize(
    "text",
    [
        b'{"x": NaN, "y": Infinity, "z": -Infinity}',
        b'{"n": 123456789012345678901234567890, "m": -98765432109876543210}',
        b'{"when": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05+00:00"}}',
        b'{"id": {"\\u005f_type__": "uuid", "__value__": {"hex": "0f3a4c1e8d2b4b6e9a573c1d2e4f5a60"}}}',
        b'{"s": "\\ud800"}',
        b'{"a": 1, "a": 2}',
        b'{"n": 1e400}',
    ],
    ids=["non-standard tokens", "big integers", "envelope", "escaped envelope", "lone surrogate", "duplicate key", "beyond a double"],
)
def test_text_kombus_json_decodes_its_own_way_is_decoded_by_it(text: bytes) -> None:
    assert json_serializer.loads(text) == kombu_json.loads(text)
    assert json_serializer.loads(bytearray(text)) == kombu_json.loads(text)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (b'{"a": ', json.JSONDecodeError),
        (b"[" * 100_000 + b"]" * 100_000, RecursionError),
        (b'{"__type__": "unknown", "__value__": 1}', ValueError),
    ],
    ids=["truncated", "100,000 levels", "unknown envelope"],
)
def test_text_neither_decodes_fails_with_kombus_error(text: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        json_serializer.loads(text)
    with pytest.raises(DecodeError):
        kombu_loads(text, "application/json", "utf-8", accept={"application/json"})
