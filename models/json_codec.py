"""JSON decoding with orjson wherever it gives exactly what the standard library gives.

orjson decodes several times faster than `json`, but not always to the same values: an integer
beyond 64 bits becomes a (rounded) float, and what is not strict JSON (`NaN`, `Infinity`, a
lone surrogate, a number beyond a double, nesting past 1,024 levels) is an error where `json`
accepts it or fails differently. A text that may hold such an integer (a run of 19 digits or
more), and any text orjson refuses, is decoded by the standard library instead: the result,
or the error, is the one `json` gives.
"""

import json
from collections.abc import Callable
from typing import Any

import orjson

Decoder = Callable[[Any], Any]

BIG_INTEGER_DIGITS = 19
"""2**63 has 19 digits: a shorter integer always fits orjson's 64 bits."""
_DIGITS_AS_ZERO_BYTES = bytes.maketrans(b"123456789", b"000000000")
_DIGITS_AS_ZERO_TEXT = str.maketrans("123456789", "000000000")
_ZEROS_BYTES = b"0" * BIG_INTEGER_DIGITS
_ZEROS_TEXT = "0" * BIG_INTEGER_DIGITS


def may_hold_big_integers(data: str | bytes) -> bool:
    """Whether `data` has 19 digits in a row: maybe an integer orjson would not decode exactly.
    (Also true of digits inside strings and of long fractions, which then only take the slower,
    equally exact decoder.) Every digit mapped to 0 then one substring search: a regular
    expression costs several times more."""
    if isinstance(data, str):
        return _ZEROS_TEXT in data.translate(_DIGITS_AS_ZERO_TEXT)
    return _ZEROS_BYTES in data.translate(_DIGITS_AS_ZERO_BYTES)


def decode(data: str | bytes, fallback: Decoder = json.loads) -> Any:
    """`fallback(data)`'s value (`json.loads` by default), decoded by orjson where that is the same."""
    if may_hold_big_integers(data):
        return fallback(data)
    return decode_exact_integers(data, fallback)


def decode_exact_integers(data: str | bytes, fallback: Decoder = json.loads) -> Any:
    """`decode` of a text known to hold no integer beyond 64 bits (no scan for one)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return fallback(data)
