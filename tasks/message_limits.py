"""How big, deep and wide one message may be: checked before a message is handed to a pool process.

A message's decoded body is pickled by the worker's main process on its way to a pool process, so
a body nested a few hundred levels deep stops the main process itself (pickle recursion), and a
huge one costs every process that touches it. `check_message` walks a decoded body once and
refuses the first part over a limit, naming where it is (`flow_run.parameters.x.0: ...`).
The walk recurses at most `max_depth` levels, so it cannot itself run out of stack.
"""

from collections import deque
from dataclasses import dataclass
from typing import Any

from models.settings import Settings

TASK_ID_MAX_LENGTH = 255
"""A task id is the inbox's primary key and a result-backend key: long enough for any UUID or
prefixed id, short enough for a btree entry."""

PATH_PARTS_SHOWN = 8
"""A refusal names at most this many levels of the offending path (deep paths are elided)."""


@dataclass(frozen=True)
class MessageLimits:
    max_bytes: int
    max_depth: int
    max_string_length: int
    max_list_length: int
    max_object_keys: int

    @classmethod
    def from_settings(cls, settings: Settings) -> "MessageLimits":
        return cls(
            max_bytes=settings.max_message_bytes,
            max_depth=settings.max_message_depth,
            max_string_length=settings.max_string_length,
            max_list_length=settings.max_list_length,
            max_object_keys=settings.max_object_keys,
        )


class MessageRefused(Exception):
    """One part of a message is over a limit; `path` names it (dotted), `reason` says which limit."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class _OverLimit(Exception):
    """Raised where the walk finds a value over a limit; each level adds its key on the way out."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: deque[str] = deque()


def size_refusal(limits: MessageLimits, size: int, heaviest: str = "body") -> MessageRefused:
    """The refusal of a message of `size` bytes, naming the part that holds most of it."""
    return MessageRefused(
        heaviest,
        f"the message is {size} bytes, over the limit of {limits.max_bytes} bytes (FLOWRUNS_MAX_MESSAGE_BYTES)"
        + ("" if heaviest == "body" else f"; {heaviest} holds most of it"),
    )


def heaviest_path(value: Any, root: str, max_depth: int) -> str:
    """The dotted path of the part of `value` that holds most of its bytes: from the top, step into
    the heaviest child while it holds at least half of its parent."""
    parts = [root] if root else []
    for _ in range(max_depth):
        children = _children(value)
        if not children:
            break
        weights = [(_weight(child, max_depth), key, child) for key, child in children]
        weight, key, child = max(weights, key=lambda entry: entry[0])
        if weight * 2 < _weight(value, max_depth):
            break
        parts.append(_short(key))
        value = child
    return ".".join(parts) or "body"


def _children(value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [(str(key), item) for key, item in value.items()]
    if isinstance(value, list):
        return [(str(index), item) for index, item in enumerate(value)]
    return []


def _weight(value: Any, depth_left: int) -> int:
    """About how many bytes `value` takes as JSON (containers below `depth_left` count as small)."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, (dict, list)):
        if depth_left <= 0:
            return 2
        return 2 + sum(_weight(key, 0) + _weight(item, depth_left - 1) for key, item in _children(value))
    return 8


def check_value(limits: MessageLimits, value: Any, root: str) -> None:
    """Refuse `value` (decoded JSON) if any part of it is over a limit; `root` names it in the error.

    Depth counts containers: `{"a": [1]}` is two levels deep.
    """
    try:
        _walk(limits, value, 1)
    except _OverLimit as over:
        raise MessageRefused(_render_path(root, over.path), over.reason) from None


def _walk(limits: MessageLimits, value: Any, depth: int) -> None:
    if isinstance(value, str):
        _check_string(limits, value)
        return
    if isinstance(value, dict):
        _check_container(limits, depth, len(value), limits.max_object_keys, "keys", "FLOWRUNS_MAX_OBJECT_KEYS")
        for key, item in value.items():
            try:
                if isinstance(key, str):
                    _check_string(limits, key)
                if isinstance(item, (str, dict, list)):
                    _walk(limits, item, depth + 1)
            except _OverLimit as over:
                over.path.appendleft(str(key))
                raise
    elif isinstance(value, list):
        _check_container(limits, depth, len(value), limits.max_list_length, "items", "FLOWRUNS_MAX_LIST_LENGTH")
        for index, item in enumerate(value):
            if isinstance(item, (str, dict, list)):
                try:
                    _walk(limits, item, depth + 1)
                except _OverLimit as over:
                    over.path.appendleft(str(index))
                    raise


def _check_container(limits: MessageLimits, depth: int, size: int, maximum: int, unit: str, setting: str) -> None:
    if depth > limits.max_depth:
        raise _OverLimit(f"nested more than {limits.max_depth} levels deep (FLOWRUNS_MAX_MESSAGE_DEPTH)")
    if size > maximum:
        raise _OverLimit(f"{size} {unit}, over the limit of {maximum} ({setting})")


def _check_string(limits: MessageLimits, value: str) -> None:
    if len(value) > limits.max_string_length:
        raise _OverLimit(
            f"a string of {len(value)} characters, over the limit of {limits.max_string_length} "
            "(FLOWRUNS_MAX_STRING_LENGTH)"
        )


def _render_path(root: str, parts: deque[str]) -> str:
    shown = [root] if root else []
    shown.extend(_short(part) for part in list(parts)[:PATH_PARTS_SHOWN])
    path = ".".join(shown) or "body"
    hidden = len(parts) - PATH_PARTS_SHOWN
    return f"{path}... ({hidden} levels more)" if hidden > 0 else path


def _short(part: str) -> str:
    """A key as it may appear in an error: long or odd keys are cut (the key may itself be hostile)."""
    cleaned = part.replace("\x00", "\\x00")
    return cleaned if len(cleaned) <= 64 else f"{cleaned[:61]}..."
