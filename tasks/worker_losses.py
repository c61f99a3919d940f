"""Messages whose pool process dies: delivered again a few times, then parked.

With late acks and `task_reject_on_worker_lost`, Celery requeues the message of a pool process
that died, so a killed process loses nothing; but a message that kills its process every time
(a crash in native code, memory exhaustion) would be delivered forever, taking a process down
each time. A process killed at the hard time limit is such a loss too. Here each requeue is a
copy of the message that counts its losses in a header (the count travels with the message, so
every worker host sees it); at `FLOWRUNS_MAX_WORKER_LOSSES` the message is parked instead:
acknowledged, logged, and its producer gets a FAILURE result (`PoisonMessageError`). Shutdowns
and revocations keep Celery's own handling.
"""

import logging
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery.utils.saferepr import saferepr
from celery.worker import state as worker_state
from celery.worker.request import Request

from models.errors import PoisonMessageError
from models.settings import get_settings

logger = logging.getLogger(__name__)

WORKER_LOSSES_HEADER = "flowruns_worker_losses"
"""How many pool processes this message's earlier copies took down."""

REQUEUE_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}


class CountingRequest(Request):
    """Celery's request, with a lost pool process counted against the message (`Task.Request`).
    A process killed at the hard time limit counts as lost too: its message is delivered again
    (not failed), and a message that runs out of time again and again is parked."""

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
        error = _unwrapped(exc_info.exception)
        if not (self._pool_process_died(error) and self._counted_loss(error)):
            super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        if soft or not self._may_requeue():
            super().on_timeout(soft, timeout)
            return
        # The pool then reports the job failed with TimeLimitExceeded: `on_failure` counts the loss.
        logger.error("Hard time limit (%ss) exceeded for %s[%s]", timeout, self.name, self.id)

    def _counted_loss(self, error: BaseException) -> bool:
        """Deliver the message again with one more loss counted, or park it at the limit; False
        when no copy could be published (Celery's own handling then requeues it, uncounted)."""
        losses, limit = self.worker_losses() + 1, get_settings().max_worker_losses
        if losses >= limit:
            worker_state.task_ready(self)
            self._park(losses, error)
            return True
        if not self._requeue_counted(losses):
            return False
        worker_state.task_ready(self)
        logger.warning("Task %s[%s] lost its pool process (%s); delivered again (loss %d of %d)",
                       self.name, self.id, error, losses, limit)
        return True

    def worker_losses(self) -> int:
        value = self._request_dict.get(WORKER_LOSSES_HEADER)
        return value if isinstance(value, int) and value >= 0 else 0

    def _may_requeue(self) -> bool:
        """Late acks with requeue on a lost worker, and no shutdown under way (Celery requeues
        what a shutdown interrupts)."""
        if not (self.task.acks_late and self.task.reject_on_worker_lost):
            return False
        return worker_state.should_stop in (None, False) and worker_state.should_terminate in (None, False)

    def _pool_process_died(self, error: BaseException) -> bool:
        if not self._may_requeue():
            return False
        if isinstance(error, (WorkerLostError, TimeLimitExceeded)):
            return True
        # billiard reports a process's exit before it is gone; a cancel or revoke is not a loss
        return isinstance(error, (SystemExit, KeyboardInterrupt)) and not (
            self._already_cancelled or self._already_revoked
        )

    def _requeue_counted(self, losses: int) -> bool:
        """Publish a copy carrying `losses`, then acknowledge this delivery; False if publishing failed."""
        message = self._message
        delivery = message.delivery_info or {}
        properties = message.properties or {}
        try:
            with self.task.app.producer_or_acquire() as producer:
                producer.publish(
                    message.body,
                    exchange=delivery.get("exchange") or "",
                    routing_key=delivery.get("routing_key"),
                    headers={**message.headers, WORKER_LOSSES_HEADER: losses},
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    correlation_id=properties.get("correlation_id"),
                    reply_to=properties.get("reply_to"),
                    priority=properties.get("priority"),
                    retry=True,
                    retry_policy=REQUEUE_RETRY_POLICY,
                )
        except Exception:  # noqa: BLE001 - fall back to Celery's requeue, which loses nothing either
            logger.exception("Task %s[%s]: could not publish the counted copy", self.name, self.id)
            return False
        self.acknowledge()
        return True

    def _park(self, losses: int, last: BaseException) -> None:
        error = PoisonMessageError(
            f"{self.name}[{self.id}]: its worker process died {losses} times while running it "
            f"(last: {last}); parked, not delivered again"
        )
        logger.error("Task %s[%s] parked: %s", self.name, self.id, error)
        self.acknowledge()
        self.task.backend.mark_as_failure(self.id, error, request=self._context, store_result=self.store_errors)
        self.send_event("task-failed", exception=saferepr(error), traceback=None)


def _unwrapped(error: BaseException) -> BaseException:
    """The exception itself: billiard hands the main process some wrapped with their traceback."""
    return error.exc if isinstance(error, ExceptionWithTraceback) else error
