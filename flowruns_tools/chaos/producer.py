"""The foreign producer: task names, JSON kwargs, a task id per request, re-sent under the same id
when no result arrives in time (CONTRACT section 3); results read from the backend as stored."""

import contextlib
import heapq
import itertools
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from kombu import Queue

from flowruns_tools.chaos.services import RESULT_PREFIX, ChaosSetupError
from tasks.broker_topology import broker_kind

RESEND_AFTER_SECONDS = 20.0
"""The producer's own timeout: longer than a redelivery takes, so the broker recovers first."""
SWEEP_SECONDS = 1.0
"""Results are announced by pub/sub; a read of the stored results every this often catches any missed."""
FINAL_STATES = frozenset({"SUCCESS", "FAILURE"})
TRANSIENT_FAILURES = frozenset({
    "OperationalError", "InterfaceError", "DisconnectionError", "WorkerLostError", "ConnectionError",
    "TimeoutError",
})
"""A FAILURE of these classes means the request did not take effect: the producer re-sends it."""


def publish_raw(app: Celery, name: str, kwargs_json: str, task_id: str, queue: str, **headers: Any) -> None:
    """Publish a protocol 2 task message whose kwargs are the given JSON text, as a producer in any
    language could (Python's encoder cannot even write some hostile bodies, 100,000 levels deep say)."""
    body = f'[[], {kwargs_json}, {{"callbacks": null, "errbacks": null, "chain": null, "chord": null}}]'
    message_headers = {
        "lang": "py", "task": name, "id": task_id, "root_id": task_id, "parent_id": None, "group": None,
        "retries": 0, "eta": None, "expires": None, "timelimit": [None, None], "shadow": None,
        "argsrepr": "()", "kwargsrepr": "{...}", "origin": "raw-producer", "ignore_result": False, **headers,
    }
    with app.producer_or_acquire() as producer:
        producer.publish(
            body.encode(), exchange="", routing_key=queue, headers=message_headers,
            content_type="application/json", content_encoding="utf-8", correlation_id=task_id,
        )


@dataclass(eq=False)
class Request:
    """One request: one task id, however many messages carried it."""

    task_id: str
    name: str
    kwargs: dict[str, Any]
    tag: Any = None
    on_done: Callable[["Request"], None] | None = None
    copies: int = 1
    sends: int = 0
    """Messages published for it (copies and re-sends)."""
    resends: int = 0
    transient_failures: int = 0
    first_sent: float | None = None
    last_sent: float = 0.0
    next_send: float = 0.0
    meta: dict[str, Any] | None = None
    """The final result as stored in the backend: what any producer, in any language, reads."""
    finished: float | None = None
    queued: bool = False
    raw_kwargs: str | None = None
    """Kwargs as JSON text, published as they are (hostile bodies); `kwargs` is then empty."""

    @property
    def latency(self) -> float | None:
        return None if self.finished is None or self.first_sent is None else self.finished - self.first_sent

    @property
    def succeeded(self) -> bool:
        return self.meta is not None and self.meta.get("status") == "SUCCESS"

    @property
    def result(self) -> Any:
        return None if self.meta is None else self.meta.get("result")

    @property
    def exc_type(self) -> str | None:
        if self.meta is None or self.meta.get("status") != "FAILURE":
            return None
        return str((self.meta.get("result") or {}).get("exc_type"))


class Driver:
    """A foreign producer: sends by name with JSON kwargs and a task id of its own, re-sends the same id
    when no result arrived within `resend_after`, and reads the results from the backend (pub/sub
    announcements plus a periodic read of the stored results). Single-threaded: call `pump` often.
    """

    def __init__(self, broker_url: str, result_backend: str, queue: str, *, resend_after: float = RESEND_AFTER_SECONDS,
                 copies: int = 1) -> None:
        self.queue = queue
        self.resend_after = resend_after
        self.copies = copies
        # No result backend on the app: it would subscribe to every sent task's result channel (Celery's
        # Redis backend does, on send) on a connection nobody reads; Redis drops it at its pub/sub
        # output limit, and the next send blocks for the backend's 120 s socket timeout. Results are
        # read below, from `result_backend` directly.
        self.app = Celery("flowruns-chaos-producer", broker=broker_url, set_as_current=False)
        self.app.conf.update(
            task_default_queue=queue,
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=True,
            task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1},
        )
        if broker_kind(broker_url) == "amqp":
            # the worker declares its quorum queue; a classic declaration here would be refused
            self.app.conf.task_queues = [Queue(queue, no_declare=True)]
        self.results = redis.Redis.from_url(result_backend, socket_connect_timeout=2, socket_timeout=10)
        self.requests: dict[str, Request] = {}
        self.pending: dict[str, Request] = {}
        self.to_send: deque[Request] = deque()
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = itertools.count()
        self._pubsub: Any = None
        self._next_sweep = 0.0
        self._broker_down_until = 0.0
        self.messages = 0
        self.resends = 0
        self.send_errors = 0
        self.read_errors = 0
        self.transient_failures = 0

    # -- sending

    def submit(self, name: str, kwargs: dict[str, Any], *, on_done: Callable[[Request], None] | None = None,
               tag: Any = None, task_id: str | None = None, copies: int | None = None) -> Request:
        request = Request(task_id=task_id or str(uuid.uuid4()), name=name, kwargs=kwargs, tag=tag, on_done=on_done,
                          copies=self.copies if copies is None else copies)
        self.requests[request.task_id] = request
        self.pending[request.task_id] = request
        self._enqueue(request)
        return request

    def submit_raw(self, name: str, kwargs_json: str, *, on_done: Callable[[Request], None] | None = None,
                   tag: Any = None) -> Request:
        """`submit`, with the kwargs given as JSON text and sent as they are."""
        request = Request(task_id=str(uuid.uuid4()), name=name, kwargs={}, tag=tag, on_done=on_done, copies=1,
                          raw_kwargs=kwargs_json)
        self.requests[request.task_id] = request
        self.pending[request.task_id] = request
        self._enqueue(request)
        return request

    def _enqueue(self, request: Request, resend: bool = False) -> None:
        if request.queued:
            return
        request.queued = True
        if resend:
            request.resends += 1
            self.resends += 1
        self.to_send.append(request)

    def replay(self, request: Request, on_done: Callable[[Request], None] | None = None) -> Request:
        """Send a finished request again under its id (a copy long after the run moved on)."""
        copy = Request(task_id=request.task_id, name=request.name, kwargs=request.kwargs, tag=request.tag,
                       on_done=on_done, copies=1)
        self.results.delete(RESULT_PREFIX + request.task_id)
        self.pending[copy.task_id] = copy
        self._enqueue(copy)
        return copy

    def later(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._sequence), action))

    def _send(self, request: Request, now: float) -> bool:
        try:
            for _ in range(request.copies if request.sends == 0 else 1):
                if request.raw_kwargs is not None:
                    publish_raw(self.app, request.name, request.raw_kwargs, request.task_id, self.queue)
                else:
                    self.app.send_task(request.name, kwargs=request.kwargs, task_id=request.task_id, queue=self.queue)
                request.sends += 1
                self.messages += 1
        except Exception:  # the broker is away: keep the request and try again shortly
            self.send_errors += 1
            self._broker_down_until = now + 0.5
            request.next_send = now + 0.5
            return False
        if request.first_sent is None:
            request.first_sent = now
        request.last_sent = now
        return True

    # -- receiving

    def _subscribe(self) -> None:
        if self._pubsub is None:
            pubsub = self.results.pubsub(ignore_subscribe_messages=True)
            pubsub.psubscribe(f"{RESULT_PREFIX}*")
            self._pubsub = pubsub

    def _read_announcements(self, timeout: float) -> None:
        try:
            self._subscribe()
            message = self._pubsub.get_message(timeout=timeout)
            for _ in range(20_000):
                if message is None:
                    break
                channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
                request = self.pending.get(channel[len(RESULT_PREFIX):])
                if request is not None:
                    self._on_meta(request, json.loads(message["data"]))
                message = self._pubsub.get_message(timeout=0)
        except (redis.exceptions.RedisError, OSError):
            self.read_errors += 1
            with contextlib.suppress(Exception):
                self._pubsub.close()
            self._pubsub = None
            time.sleep(min(timeout, 0.2))

    def _sweep(self, now: float) -> None:
        """Read the stored results of requests waiting longer than a sweep (announcements can be missed)."""
        waiting = [r for r in self.pending.values() if r.sends and now - r.last_sent > SWEEP_SECONDS]
        try:
            for start in range(0, len(waiting), 1000):
                chunk = waiting[start:start + 1000]
                for request, raw in zip(chunk, self.results.mget([RESULT_PREFIX + r.task_id for r in chunk])):
                    if raw is not None and self.pending.get(request.task_id) is request:
                        self._on_meta(request, json.loads(raw))
        except (redis.exceptions.RedisError, OSError):
            self.read_errors += 1
            return
        for request in list(self.pending.values()):
            if request.sends and now - request.last_sent > self.resend_after:
                self._enqueue(request, resend=True)

    def _on_meta(self, request: Request, meta: dict[str, Any]) -> None:
        status = meta.get("status")
        if status not in FINAL_STATES:
            return
        exc_type = (meta.get("result") or {}).get("exc_type") if status == "FAILURE" else None
        if exc_type in TRANSIENT_FAILURES:
            # It did not take effect (the transaction rolled back): send it again, same id.
            request.transient_failures += 1
            self.transient_failures += 1
            with contextlib.suppress(redis.exceptions.RedisError):
                self.results.delete(RESULT_PREFIX + request.task_id)
            self._enqueue(request, resend=True)
            return
        request.meta = meta
        request.finished = time.monotonic()
        del self.pending[request.task_id]
        if request.on_done is not None:
            request.on_done(request)

    # -- the loop

    def pump(self, timeout: float = 0.01) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            heapq.heappop(self.timers)[2]()
        deferred: list[Request] = []
        while self.to_send and now >= self._broker_down_until:
            request = self.to_send.popleft()
            if self.pending.get(request.task_id) is not request:
                request.queued = False
                continue
            if request.next_send > now or not self._send(request, now):
                deferred.append(request)
            else:
                request.queued = False
        self.to_send.extend(deferred)
        self._read_announcements(timeout)
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_SECONDS
            self._sweep(now)

    def run_until(self, done: Callable[[], bool], deadline: float, tick: Callable[[], None] | None = None) -> bool:
        while not done():
            if time.monotonic() > deadline:
                return False
            self.pump()
            if tick is not None:
                tick()
        return True

    def call(self, name: str, kwargs: dict[str, Any], timeout: float = 60.0) -> Any:
        """Send and wait: the result, or ChaosSetupError with the failure (for set-up steps)."""
        request = self.submit(name, kwargs, copies=1)
        if not self.run_until(lambda: request.meta is not None, time.monotonic() + timeout):
            raise ChaosSetupError(f"{name} got no result in {timeout:.0f}s")
        if not request.succeeded:
            raise ChaosSetupError(f"{name} failed: {request.result}")
        return request.result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._pubsub is not None:
                self._pubsub.close()
        self.results.close()
        self.app.close()
