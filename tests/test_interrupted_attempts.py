"""An attempt that cannot finish as planned: stopped by the worker while it ran, or unable to
publish its own retry. Neither may end as a FAILURE for a request that did not fail."""

from typing import Any

import kombu.exceptions
import psycopg
import pytest
from celery import Celery
from celery.canvas import Signature
from celery.exceptions import Reject
from sqlalchemy import exc as sa_exc

import tasks.base
from tasks import flow_runs
from tests.celery_support import offline_app  # noqa: F401 - fixture


def lost_connection() -> sa_exc.OperationalError:
    return sa_exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed the connection unexpectedly"))


def test_a_database_error_raised_while_the_process_is_being_stopped_stops_it_without_a_retry(
    offline_app: Celery, monkeypatch: pytest.MonkeyPatch, retries: list[Any]  # noqa: F811
) -> None:
    """Celery stops a pool process by raising SystemExit in the task (it cancels a task whose
    broker connection was lost); the session's clean-up on the interrupted connection then fails
    with an error of its own. The stop goes on: no retry is published, the process exits, and the
    unacknowledged message is delivered again."""

    def interrupted(*_args: Any) -> Any:
        try:
            raise SystemExit(-241)
        except SystemExit:
            raise sa_exc.OperationalError(
                "ROLLBACK", {}, psycopg.OperationalError("sending query failed: another command is already in progress")
            ) from None

    monkeypatch.setattr(tasks.base, "run_unit", interrupted)

    with pytest.raises(SystemExit) as stopped:
        flow_runs.count_flow_runs()

    assert stopped.value.code == -241
    assert retries == []


def test_a_retry_that_cannot_be_published_sends_the_message_back_to_its_queue(
    offline_app: Celery, monkeypatch: pytest.MonkeyPatch, retries: list[Any]  # noqa: F811
) -> None:
    """Celery answers a retry it could not publish with a reject without requeue: the producer
    would get a FAILURE for a request that took no effect (and that RabbitMQ may deliver again
    anyway). flowruns requeues the message instead."""

    def lost(*_args: Any) -> Any:
        raise lost_connection()

    def broker_away(*_args: Any, **_kwargs: Any) -> Any:
        raise kombu.exceptions.OperationalError("[Errno 111] Connection refused")

    monkeypatch.setattr(tasks.base, "run_unit", lost)
    monkeypatch.setattr(Signature, "apply_async", broker_away)

    task = flow_runs.count_flow_runs
    task.push_request(id="a-delivered-message", retries=0, called_directly=False)  # as the worker runs it
    try:
        with pytest.raises(Reject) as rejected:
            task.run()
    finally:
        task.pop_request()

    assert rejected.value.requeue is True
    assert len(retries) == 1 and isinstance(retries[0], sa_exc.OperationalError)
