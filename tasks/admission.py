"""The door: every message is checked in the worker's main process before it is handed on.

Celery's main process decodes a message and pickles the decoded body to a pool process before
any task code runs; a body too deep to pickle, or one it cannot decode, used to stop the main
process itself, and with it every task it held. The strategy here runs first for every task of
the app (Celery's built-in tasks included): it bounds the message's size, the nesting, string,
list and key counts of its body and headers (`tasks.message_limits`; a body's `parameters` and
`job_variables` by their nesting only), its shape, and how far ahead its ETA is. A message over
a limit is acknowledged (never delivered again), its producer gets a FAILURE result with a
`ValidationError` naming the part and the limit, Flower sees the task fail, and nothing is
written. Everything else goes on to Celery's own strategy unchanged.
"""

import datetime
import logging
from collections.abc import Callable
from typing import Any

from celery.app.task import Context
from celery.exceptions import InvalidTaskError
from celery.utils.time import maybe_iso8601
from celery.worker.strategy import default as celery_strategy
from kombu.exceptions import ContentDisallowed, DecodeError

from models.errors import ValidationError
from models.settings import get_settings
from tasks.message_limits import (
    TASK_ID_MAX_LENGTH,
    MessageLimits,
    MessageRefused,
    check_kwargs,
    check_value,
    heaviest_path,
    size_refusal,
)

logger = logging.getLogger(__name__)

MessageHandler = Callable[..., Any]

REFUSED_KWARGS_REPR = "<refused at the door>"
"""What events and logs show instead of a refused message's arguments."""

OVERSIZE_DECODED_UP_TO = 16
"""A message over the byte limit by up to this factor is still decoded, to name the field that
makes it too big; a bigger one is refused as a whole (with the default 2 MiB limit, the main
process decodes at most 32 MiB)."""


def guarded_strategy(task: Any, app: Any, consumer: Any, **options: Any) -> MessageHandler:
    """Celery's default strategy for `task`, behind the door (the `Task.Strategy` of every task)."""
    handle = celery_strategy(task, app, consumer, **options)
    settings = get_settings()
    limits = MessageLimits.from_settings(settings)
    max_eta_ahead = datetime.timedelta(seconds=settings.visibility_timeout)

    def handle_behind_the_door(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any) -> Any:
        try:
            admit(limits, max_eta_ahead, message, body)
        except MessageRefused as refused:
            refuse(task, consumer, message, body, ack, str(refused))
            return None
        try:
            return handle(message, body, ack, reject, callbacks, **kwargs)
        except (InvalidTaskError, ContentDisallowed, DecodeError):
            raise  # the consumer's own handling: logged and rejected without requeue
        except Exception as error:  # noqa: BLE001 - whatever a message does, the main process stays up
            logger.exception("%s: a message could not be handed on", task.name)
            refuse(task, consumer, message, body, ack, f"body: malformed message ({type(error).__name__}: {error})")
            return None

    return handle_behind_the_door


def admit(limits: MessageLimits, max_eta_ahead: datetime.timedelta, message: Any, body: Any) -> None:
    """Raise `MessageRefused` if the message is over a limit or not a task message Celery can run."""
    size = len(message.body or b"")
    if size > limits.max_bytes:
        raise _oversize_refusal(limits, message, body, size)
    headers = message.headers if isinstance(message.headers, dict) else {}
    if body is None:  # protocol 2: the body is decoded here first (Celery would decode it right after)
        _check_task_id(headers.get("id"), "headers.id")
        check_value(limits, headers, "headers")
        try:
            body = message.decode()
        except ContentDisallowed:
            raise  # not JSON: the consumer refuses it as before
        except Exception as error:  # noqa: BLE001 - DecodeError, or a RecursionError from a deep body
            raise _undecodable(limits, error) from None
        _check_protocol_2(limits, body)
        eta = headers.get("eta")
    else:  # protocol 1: the consumer decoded the whole message, arguments and task id included
        if not isinstance(body, dict):
            raise MessageRefused("body", "not a Celery task message")
        _check_task_id(body.get("id"), "body.id")
        check_value(limits, headers, "headers")
        check_value(limits, {key: value for key, value in body.items() if key != "kwargs"}, "body")
        check_kwargs(limits, body.get("kwargs"), "body.kwargs", depth=2)
        eta = body.get("eta")
    _check_eta(max_eta_ahead, eta)


def _check_task_id(task_id: Any, path: str) -> None:
    if not isinstance(task_id, str) or not 0 < len(task_id) <= TASK_ID_MAX_LENGTH:
        raise MessageRefused(path, f"the task id must be a string of 1 to {TASK_ID_MAX_LENGTH} characters")


def _oversize_refusal(limits: MessageLimits, message: Any, body: Any, size: int) -> MessageRefused:
    if body is None and size <= OVERSIZE_DECODED_UP_TO * limits.max_bytes:
        try:
            body = message.decode()
        except Exception:  # noqa: BLE001 - undecodable too: named as a whole
            body = None
    if isinstance(body, list) and len(body) == 3 and isinstance(body[1], dict):
        return size_refusal(limits, size, heaviest_path(body[1], "", limits.max_depth))
    return size_refusal(limits, size)


def _check_protocol_2(limits: MessageLimits, body: Any) -> None:
    if not (isinstance(body, list) and len(body) == 3):
        raise MessageRefused("body", "not a Celery protocol 2 body ([args, kwargs, embed])")
    args, kwargs, embed = body
    if not isinstance(args, list):
        raise MessageRefused("args", "must be a list")
    if not isinstance(kwargs, dict):
        raise MessageRefused("kwargs", "must be an object of keyword arguments")
    if embed is not None and not isinstance(embed, dict):
        raise MessageRefused("embed", "must be an object")
    check_value(limits, args, "args")
    check_kwargs(limits, kwargs, "")
    check_value(limits, embed, "embed")


def _check_eta(max_ahead: datetime.timedelta, eta: Any) -> None:
    """An ETA further ahead than the visibility timeout would be delivered again before it runs, and
    again, each copy held in a worker's memory: refused. An ETA Celery cannot parse, Celery refuses."""
    if not isinstance(eta, str):
        return
    try:
        moment = maybe_iso8601(eta)
    except (TypeError, ValueError):
        return
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    if moment - datetime.datetime.now(datetime.timezone.utc) > max_ahead:
        raise MessageRefused(
            "headers.eta",
            f"more than {int(max_ahead.total_seconds())} s ahead (FLOWRUNS_VISIBILITY_TIMEOUT): "
            "the broker would deliver it again before it is due",
        )


def _undecodable(limits: MessageLimits, error: BaseException) -> MessageRefused:
    while isinstance(error, DecodeError) and (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]  # kombu wraps the decoder's error
    if isinstance(error, RecursionError):
        return MessageRefused(
            "body", f"nested too deep to decode (the limit is {limits.max_depth} levels, FLOWRUNS_MAX_MESSAGE_DEPTH)"
        )
    text = str(error) or type(error).__name__
    return MessageRefused("body", f"cannot be decoded as JSON ({text if len(text) <= 200 else text[:197] + '...'})")


def refuse(task: Any, consumer: Any, message: Any, body: Any, ack: Any, reason: str) -> None:
    """Acknowledge a message that will not run, tell its producer why, and let Flower see it.

    `body` is the decoded body of a protocol 1 message (its task id is there), None otherwise."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    task_id = body.get("id") if isinstance(body, dict) else headers.get("id")
    logger.warning("%s[%s] refused at the door: %s", task.name, _loggable_id(task_id), reason)
    if isinstance(task_id, str) and 0 < len(task_id) <= TASK_ID_MAX_LENGTH:
        _store_failure(task, consumer, message, task_id, reason)
        _send_events(consumer, task, task_id, reason)
    ack(logger, consumer.connection_errors)


def _store_failure(task: Any, consumer: Any, message: Any, task_id: str, reason: str) -> None:
    properties = message.properties or {}
    delivery_info = message.delivery_info or {}
    request = Context(
        task=task.name, id=task_id, args=[], kwargs={}, hostname=consumer.hostname,
        delivery_info={"routing_key": delivery_info.get("routing_key")},
        reply_to=properties.get("reply_to"), correlation_id=properties.get("correlation_id") or task_id,
    )
    try:
        task.backend.mark_as_failure(task_id, ValidationError(reason), request=request)
    except Exception:  # noqa: BLE001 - the refusal stands even if the backend is unreachable
        logger.exception("%s[%s]: the refusal could not be stored in the result backend", task.name, task_id)


def _send_events(consumer: Any, task: Any, task_id: str, reason: str) -> None:
    eventer = consumer.event_dispatcher
    if not (eventer and eventer.enabled and task.send_events):
        return
    eventer.send("task-received", uuid=task_id, name=task.name, args="()", kwargs=REFUSED_KWARGS_REPR)
    eventer.send("task-failed", uuid=task_id, exception=f"ValidationError({reason!r})", traceback=None)


def _loggable_id(task_id: Any) -> str:
    text = str(task_id)
    return text if len(text) <= 80 else f"{text[:77]}..."
