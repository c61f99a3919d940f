"""The one adapter every task goes through.

kwargs --validate--> pydantic body --> one model call inside `unit_of_work()` (with the inbox for
state-changing tasks) --> JSON --> after commit, follow-up tasks.

Errors travel as the task's FAILURE: `ObjectNotFoundError` and `ValidationError` at once (one
message argument, so Celery's JSON result carries `exc_type` and `exc_message`); a lost database
or broker connection is retried with capped exponential backoff and full jitter.
"""

import dataclasses
import itertools
import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import kombu.exceptions
import pydantic
import pydantic_core
import redis.exceptions
from celery import Task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from models import requests
from models.concurrency_slots import slots_released
from models.database import limit_statement_time, statement_unit, unit_of_work
from models.database_errors import ErrorKind, classify, refusal_message
from models.errors import FlowRunGraphTooLarge, InvalidRequestError, ObjectNotFoundError, ValidationError
from models.schemas.responses import FlowRunJson
from models.settings import get_settings
from orchestration.service import Inbox, Transition
from tasks import monitoring_events
from tasks.broker_topology import broker_countdown
from tasks.worker_app import GuardedTask, app

logger = logging.getLogger(__name__)

BROKER_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    kombu.exceptions.OperationalError,
)
"""A lost broker or result-backend connection (a follow-up could not be sent): retried."""

BACKOFF_BASE_SECONDS = 1.0
"""The first retry waits up to this long; each further retry doubles the bound."""

INBOX_RACE_RERUNS = 2
"""How often a unit that lost the inbox race (a copy recorded first) runs again to find that record."""

FOLLOW_UP_NAMESPACE = uuid.UUID("5b0c64f2-3f0c-4d34-9a8c-0c8f6f0e7a11")
"""Follow-up task ids are UUIDv5 in this namespace, so a replay re-sends the same ids."""


class FollowUp(NamedTuple):
    """A task to enqueue once the transaction that called for it has committed."""

    name: str
    kwargs: dict[str, Any]
    task_id: str


Handler = Callable[[Session, Any, str], Any]
FollowUps = Callable[[Any, Any, str, "int | None"], Sequence[FollowUp]]
"""`(body, outcome, task_id, slots_released)`: what to enqueue after commit. `slots_released` is
None when the outcome is a recorded one (a replay: what the first copy released is not known)."""


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    name: str
    body: type[pydantic.BaseModel]
    handler: Handler
    recorded: bool
    follow_ups: FollowUps | None = None
    transition: bool = False
    """The handler is a transition (`orchestration.service`): it looks the inbox up with its read and
    records it with its write, one statement each, each its own commit (`statement_unit`)."""
    statements: "StatementPath | None" = None
    """For the bodies it applies to, a handler that works as a transition does, used instead of
    `handler` (which then serves only the other bodies)."""


TransitionHandler = Callable[[Session, Any, Inbox], Transition]


class StatementPath(NamedTuple):
    """A recorded task's cheaper path for some bodies: `handler(session, body, inbox)` in a
    `statement_unit`, its inbox look-up in its read and its record in its write."""

    applies: Callable[[Any], bool]
    handler: TransitionHandler


def failure_kind(error: BaseException) -> ErrorKind:
    """What an error that ended a unit of work means: retry, refuse, or neither (see
    `models.database_errors`); a lost broker connection is retried too."""
    if isinstance(error, BROKER_CONNECTION_ERRORS):
        return ErrorKind.TRANSIENT
    return classify(error)


def retry_countdown(retries: int, cap_seconds: float) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**retries)]."""
    return random.uniform(0, min(cap_seconds, BACKOFF_BASE_SECONDS * 2**retries))


def follow_up_id(task_id: str, name: str) -> str:
    """The deterministic id of the `name` follow-up of `task_id`."""
    return str(uuid.uuid5(FOLLOW_UP_NAMESPACE, f"{task_id}:{name}"))


def parse_body(model: type[pydantic.BaseModel], kwargs: dict[str, Any]) -> pydantic.BaseModel:
    """Validate the task's kwargs; any error names its field path (`flow_run.state.type: ...`)."""
    if (path := nul_character_path(kwargs)) is not None:
        raise ValidationError(f"{path}: NUL characters (\\u0000) cannot be stored")
    try:
        return model.model_validate(kwargs)
    except pydantic.ValidationError as error:
        raise ValidationError(describe_validation_error(error)) from None


def nul_character_path(value: Any, path: str = "") -> str | None:
    """The path of the first string (value or key) holding a NUL character, which PostgreSQL
    can store neither in text nor in JSON; None if there is none."""
    if isinstance(value, str):
        return (path or "kwargs") if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = str(key).replace("\x00", "\\x00")
            inner = f"{path}.{name}" if path else name
            if isinstance(key, str) and "\x00" in key:
                return inner
            if (found := nul_character_path(item, inner)) is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if (found := nul_character_path(item, f"{path}.{index}" if path else str(index))) is not None:
                return found
    return None


def describe_validation_error(error: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in detail['loc']) or 'kwargs'}: {detail['msg']}"
        for detail in error.errors(include_url=False)
    )


def to_json(value: Any) -> Any:
    """A model function's result as JSON: pydantic models dumped in JSON mode, durations as seconds."""
    if isinstance(value, pydantic.BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, FlowRunJson):
        return value  # formatted by the database already; a second pass would cost more than the read
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return pydantic_core.to_jsonable_python(value, timedelta_mode="float")


class _LostInboxRace(Exception):
    """A copy of the task recorded first: this copy's transaction must not commit."""


class UnitResult(NamedTuple):
    outcome: Any
    slots_released: int | None
    """Concurrency slots the unit released; None for a recorded outcome (a replay)."""


def run_transition(spec: TaskSpec, handler: TransitionHandler, body: Any, task_id: str) -> UnitResult:
    """A transition task: read, decide and write (with the inbox) through the transition service."""
    with statement_unit() as session:
        done = handler(session, body, Inbox(task_id, spec.name, to_json))
    if done.replayed:
        logger.info("%s[%s] already processed; returning the recorded outcome", spec.name, task_id)
        return UnitResult(done.encoded, None)
    return UnitResult(done.encoded, done.slots_released)


def run_unit(spec: TaskSpec, body: Any, task_id: str) -> UnitResult:
    """Run the handler in one transaction; a recorded task returns its earlier outcome instead."""
    if spec.transition:
        return run_transition(spec, spec.handler, body, task_id)
    if spec.statements is not None and spec.statements.applies(body):
        return run_transition(spec, spec.statements.handler, body, task_id)
    for attempt in itertools.count(1):
        try:
            with unit_of_work() as session:
                if not spec.recorded:
                    limit_statement_time(session, get_settings().read_timeout_seconds)
                if spec.recorded and (seen := requests.replayed_outcome(session, task_id, spec.name)) is not None:
                    logger.info("%s[%s] already processed; returning the recorded outcome", spec.name, task_id)
                    return UnitResult(seen.outcome, None)
                outcome = to_json(spec.handler(session, body, task_id))
                if spec.recorded and not requests.record_outcome(session, task_id, spec.name, outcome):
                    raise _LostInboxRace
                released = slots_released(session)
            return UnitResult(outcome, released)
        except (ObjectNotFoundError, ValidationError):
            # A copy that got past the look-up while the first copy was still running can fail
            # where the first succeeded (the run was deleted in between): the record answers.
            if spec.recorded and (seen := _recorded_outcome(spec, task_id)) is not None:
                return UnitResult(seen.outcome, None)
            raise
        except (_LostInboxRace, sa_exc.IntegrityError) as error:
            # An IntegrityError may be a copy's row too (a unique key the copy wrote first):
            # running again finds the copy's record, or raises the error if it was not a copy.
            if not spec.recorded or attempt > INBOX_RACE_RERUNS:
                if isinstance(error, _LostInboxRace):
                    raise RuntimeError(f"{spec.name}[{task_id}] lost the inbox race {attempt} times") from None
                raise
            logger.info("%s[%s] lost a race to a copy of itself; running again", spec.name, task_id)
    raise AssertionError("unreachable")  # pragma: no cover


def _recorded_outcome(spec: TaskSpec, task_id: str) -> requests.Recorded | None:
    with unit_of_work() as session:
        return requests.replayed_outcome(session, task_id, spec.name)


def send_follow_ups(task: Task, follow_ups: Sequence[FollowUp]) -> None:
    for follow_up in follow_ups:
        task.app.send_task(follow_up.name, kwargs=follow_up.kwargs, task_id=follow_up.task_id)


class FlowrunsTask(GuardedTask):
    """Base of every flowruns task: the errors that fail at once are expected, not crashes."""

    throws = (ObjectNotFoundError, ValidationError, InvalidRequestError, FlowRunGraphTooLarge)
    typing = False
    spec: TaskSpec

    def perform(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            raise ValidationError("args: positional arguments are not accepted; send keyword arguments")
        body = parse_body(self.spec.body, kwargs)
        task_id = self.request.id or str(uuid.uuid4())
        settings = get_settings()
        started = time.perf_counter()
        try:
            outcome, released = run_unit(self.spec, body, task_id)
            if self.spec.follow_ups is not None:
                send_follow_ups(self, self.spec.follow_ups(body, outcome, task_id, released))
            replayed = self.spec.recorded and released is None
            if replayed:
                monitoring_events.emit(monitoring_events.REPLAY, task=self.spec.name, task_id=task_id)
            log_request(self.spec, body, outcome, task_id, self.request.retries, replayed=replayed,
                        seconds=time.perf_counter() - started)
        except Exception as error:
            if (stop := stop_under_way(error)) is not None:
                raise stop from error  # the process is being stopped: not a failure to retry
            kind = failure_kind(error)
            # A write cancelled by a statement timeout waited on a lock held elsewhere, and an
            # attempt past the soft time limit was stopped: the transaction rolled back, try again.
            if (
                kind is ErrorKind.TRANSIENT
                or (kind is ErrorKind.CANCELLED and self.spec.recorded)
                or isinstance(error, SoftTimeLimitExceeded)
            ):
                countdown = broker_countdown(
                    retry_countdown(self.request.retries, settings.task_retry_backoff_max_seconds), settings.broker_url)
                cause = _retry_cause(error)
                monitoring_events.emit(monitoring_events.RETRY, task=self.spec.name, task_id=task_id, cause=cause)
                logger.warning("%s[%s] lost a connection or a database race, or ran out of time (%s); "
                               "retrying in %.1fs", self.name, task_id, _first_line(error) or type(error).__name__,
                               countdown, extra={"event": "flowruns.retry", "cause": cause,
                                                 "retries": self.request.retries, "countdown": round(countdown, 3)})
                try:
                    raise self.retry(exc=error, countdown=countdown, max_retries=settings.task_max_retries) from error
                except Reject as unpublished:
                    # The broker stayed away longer than the publish retry policy waits: the message
                    # itself goes back to its queue instead (nothing took effect), not a FAILURE.
                    logger.warning("%s[%s] could not publish its retry (%s); its message goes back to the queue",
                                   self.name, task_id, unpublished.reason)
                    raise Reject(unpublished.reason, requeue=True) from error
            if kind is ErrorKind.REFUSED:
                raise ValidationError(refusal_message(error, next(iter(self.spec.body.model_fields)))) from error
            if kind is ErrorKind.CANCELLED:
                raise InvalidRequestError(
                    f"request: this read took longer than {settings.read_timeout_seconds:g} s "
                    "(FLOWRUNS_READ_TIMEOUT_SECONDS) and was stopped; narrow its filters or offset"
                ) from error
            raise
        return outcome


def stop_under_way(error: BaseException) -> BaseException | None:
    """The SystemExit or KeyboardInterrupt `error` was raised while handling, if any. Celery stops
    a pool process by raising SystemExit in it (a task it cancels when the broker connection is
    lost, a shutdown); a database connection interrupted mid-statement then fails its clean-up
    with an error of its own, which must not turn the stop into a retry."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error.__cause__, error.__context__]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (SystemExit, KeyboardInterrupt)):
            return current
        pending += [current.__cause__, current.__context__]
    return None


def _first_line(error: BaseException) -> str:
    return str(error).split("\n", 1)[0]


def _retry_cause(error: BaseException) -> str:
    """Why an attempt is retried, as a metric label: the database error's class (LockNotAvailable,
    DeadlockDetected, ...), `SoftTimeLimitExceeded`, or the broker error's."""
    original = getattr(error, "orig", None)
    return type(original if original is not None else error).__name__


REQUEST_LOG = "flowruns.request"


def log_request(
    spec: TaskSpec, body: Any, outcome: Any, task_id: str, retries: int, replayed: bool, seconds: float
) -> None:
    """One line per finished request, with what an operator asks first (see `tasks.log_format`)."""
    fields: dict[str, Any] = {
        "event": REQUEST_LOG,
        "task": spec.name,
        "task_id": task_id,
        "duration_ms": round(seconds * 1000, 3),
        "retries": retries,
        "replayed": replayed,
    }
    run_id = getattr(body, "flow_run_id", None) or getattr(body, "task_run_id", None)
    if run_id is None and isinstance(outcome, dict) and spec.name.endswith("create_flow_run"):
        run_id = outcome.get("id")
    if run_id is not None:
        fields["run_id"] = str(run_id)
    proposed = getattr(getattr(body, "state", None), "type", None)
    if proposed is not None:
        fields["proposed"] = str(proposed)
    if isinstance(outcome, dict) and "status" in outcome:
        state = outcome.get("state") or {}
        fields.update(outcome=outcome["status"], resulting=state.get("type"), resulting_name=state.get("name"))
    logger.info("%s[%s] %s", spec.name, task_id, fields.get("outcome", "done"), extra=fields)


def flowruns_task(
    name: str, body: type[pydantic.BaseModel], *, recorded: bool, follow_ups: FollowUps | None = None,
    statements: StatementPath | None = None,
) -> Callable[[Handler], Task]:
    """Register `handler(session, body, task_id)` as the Celery task `name`.

    `recorded` tasks change state: their task id goes into the inbox with their outcome.
    `statements`: the bodies it applies to take its handler instead (a recorded task's only).
    """
    assert statements is None or recorded
    return _register(name, body, recorded=recorded, follow_ups=follow_ups, transition=False, statements=statements)


def transition_task(
    name: str, body: type[pydantic.BaseModel], *, follow_ups: FollowUps | None = None
) -> Callable[[Handler], Task]:
    """Register `handler(session, body, inbox) -> orchestration.service.Transition` as the Celery
    task `name`: a state change whose inbox look-up and record go with its read and its write."""
    return _register(name, body, recorded=True, follow_ups=follow_ups, transition=True, statements=None)


def _register(
    name: str, body: type[pydantic.BaseModel], *, recorded: bool, follow_ups: FollowUps | None, transition: bool,
    statements: StatementPath | None,
) -> Callable[[Handler], Task]:
    def register(handler: Handler) -> Task:
        spec = TaskSpec(name=name, body=body, handler=handler, recorded=recorded, follow_ups=follow_ups,
                        transition=transition, statements=statements)

        def run(self: FlowrunsTask, *args: Any, **kwargs: Any) -> Any:
            return self.perform(args, kwargs)

        run.__doc__ = handler.__doc__
        run.__module__ = handler.__module__
        run.__name__ = run.__qualname__ = handler.__name__
        return app.task(run, name=name, bind=True, base=FlowrunsTask, spec=spec)  # type: ignore[no-any-return]

    return register
