"""How big, deep and wide one message may be: checked before a message is handed to a pool process.

A message's decoded body is pickled by the worker's main process on its way to a pool process, so
a body nested a few hundred levels deep stops the main process itself (pickle recursion), and a
huge one costs every process that touches it. `check_value` and `check_kwargs` walk a decoded
body once and refuse the first part over a limit, naming where it is (`flow_run.labels.k: ...`).
The walk recurses at most `max_depth` levels, so it cannot itself run out of stack.

What a message costs the worker is bounded by its byte size (`max_bytes`) and its depth: decoding,
pickling and validating it is work linear in its bytes once it cannot nest deeper than the limit.
A body's free-form fields (`FREE_FORM_FIELDS`: a run's or deployment's `parameters` and
`job_variables`) are the user's own JSON, stored as it is: Prefect bounds parameters only by their
size (512 KiB as compact JSON, checked by validation), so here they meet only the message's size
and the depth, and any parameters Prefect takes that nest no deeper than the limit are taken.
Everything else in a message (headers, filters, `context`, state `data`, templates, ...) meets the
string, list and key counts too, before any validation work; validation then bounds names, tags,
labels and filter lists far lower still.
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

FREE_FORM_FIELDS = frozenset({"parameters", "job_variables"})
"""Fields of a request body (a kwarg's object: `flow_run.parameters`, `deployment.job_variables`)
that hold the user's own JSON: bounded by their depth here and by their size in validation, not by
the string, list and key counts."""


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
    _check(limits, value, root, 1, free_form_at=None)


def check_kwargs(limits: MessageLimits, kwargs: Any, root: str, depth: int = 1) -> None:
    """`check_value` for a task's keyword arguments (`depth`: how deep the kwargs object sits in
    the message): the `FREE_FORM_FIELDS` of each body (`flow_run.parameters`) are bounded by depth only."""
    _check(limits, kwargs, root, depth, free_form_at=depth + 1)


def _check(limits: MessageLimits, value: Any, root: str, depth: int, free_form_at: int | None) -> None:
    try:
        _walk(limits, value, depth, free_form_at, counted=True)
    except _OverLimit as over:
        raise MessageRefused(_render_path(root, over.path), over.reason) from None


def _walk(limits: MessageLimits, value: Any, depth: int, free_form_at: int | None, counted: bool) -> None:
    """Check `value`, `depth` levels down; `counted` is False inside a free-form field (depth only),
    whose keys are those of an object at depth `free_form_at`."""
    if isinstance(value, str):
        if counted:
            _check_string(limits, value)
        return
    if isinstance(value, dict):
        _check_container(limits, depth, len(value), limits.max_object_keys, "keys", "FLOWRUNS_MAX_OBJECT_KEYS",
                         counted)
        for key, item in value.items():
            try:
                if counted and isinstance(key, str):
                    _check_string(limits, key)
                if isinstance(item, (dict, list)) or (counted and isinstance(item, str)):
                    inner_counted = counted and not (depth == free_form_at and key in FREE_FORM_FIELDS)
                    _walk(limits, item, depth + 1, free_form_at, inner_counted)
            except _OverLimit as over:
                over.path.appendleft(str(key))
                raise
    elif isinstance(value, list):
        _check_container(limits, depth, len(value), limits.max_list_length, "items", "FLOWRUNS_MAX_LIST_LENGTH",
                         counted)
        for index, item in enumerate(value):
            if isinstance(item, (dict, list)) or (counted and isinstance(item, str)):
                try:
                    _walk(limits, item, depth + 1, free_form_at, counted)
                except _OverLimit as over:
                    over.path.appendleft(str(index))
                    raise


def _check_container(
    limits: MessageLimits, depth: int, size: int, maximum: int, unit: str, setting: str, counted: bool
) -> None:
    if depth > limits.max_depth:
        raise _OverLimit(f"nested more than {limits.max_depth} levels deep (FLOWRUNS_MAX_MESSAGE_DEPTH)")
    if counted and size > maximum:
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
