"""kombu's `json` serializer, encoding and decoding with orjson where that changes nothing.

Registered under kombu's own name and content type (`json`, `application/json`, utf-8) by
`tasks.worker_app`, so every message and result this process sends or reads goes through it, and
producers without flowruns see the same JSON as before. What kombu's json did is kept:

- encoding: datetimes, dates and times, Decimals and bytes are sent in kombu's envelope
  (`{"__type__": "datetime", "__value__": ...}`), through kombu's own encoder; what orjson
  cannot encode at all (an integer beyond 64 bits, a key that is not a string, nesting past 254
  levels) is encoded by kombu's json as before. Two differences remain: a UUID object is sent as
  its string (orjson encodes UUIDs itself; flowruns sends ids as strings anyway), and a NaN or
  infinite float as null (kombu sent the non-standard `NaN` / `Infinity` tokens).
- decoding: a text kombu's json may decode differently — one holding an envelope (`__type__`,
  possibly escaped), an integer beyond 64 bits, or anything orjson refuses (`NaN`, `Infinity`, a
  lone surrogate, nesting past 1,024 levels) — is decoded by kombu's json, giving exactly its
  value or its error (a body nested too deep still fails with a RecursionError).
"""

import re
from typing import Any

import orjson
from kombu.serialization import register
from kombu.utils import json as kombu_json

from models.json_codec import may_hold_big_integers

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
"""Datetimes and dataclasses go to kombu's encoder (`default`), as they did: orjson would encode
datetimes as plain strings and dataclasses as objects."""
_kombu_default = kombu_json.JSONEncoder().default

_ENVELOPE_KEY = b"__type__"
_ESCAPED_LETTER = re.compile(rb"\\u00[5-7][0-9a-fA-F]")
"""An escaped ASCII letter or `_`: the only way to spell `__type__` without those bytes."""


def dumps(value: Any) -> bytes | str:
    """`value` as JSON text, as kombu's json would write it (see the module's docstring)."""
    try:
        return orjson.dumps(value, default=_kombu_default, option=_OPTIONS)
    except orjson.JSONEncodeError:
        return kombu_json.dumps(value)  # type: ignore[no-any-return]  # its own result, or its own error


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """The value kombu's json would decode from `data`, or its error."""
    text = bytes(data) if isinstance(data, (bytearray, memoryview)) else data
    if _kombu_decodes_differently(text):
        return kombu_json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return kombu_json.loads(text)


def _kombu_decodes_differently(text: bytes | str) -> bool:
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    return _ENVELOPE_KEY in raw or (b"\\u" in raw and _ESCAPED_LETTER.search(raw) is not None) or may_hold_big_integers(raw)


def register_json_serializer() -> None:
    """Make `json` (kombu's default and flowruns' only serializer) this module's codec."""
    register("json", dumps, loads, content_type=CONTENT_TYPE, content_encoding=CONTENT_ENCODING)
