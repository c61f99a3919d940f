"""The typed producer helpers without a broker: re-sending under the same task id, error mapping."""

from typing import Any

import celery.exceptions
import pytest

from models.errors import ObjectNotFoundError, ValidationError
from tasks import producer


class FakeResult:
    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.result: Any = None

    def get(self, timeout: float, propagate: bool) -> Any:
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        self.result = outcome
        return outcome

    def failed(self) -> bool:
        return False


class FakeApp:
    def __init__(self, outcomes: list[Any]) -> None:
        self.result = FakeResult(outcomes)
        self.sent: list[tuple[str, str]] = []

    def send_task(self, name: str, kwargs: dict[str, Any], task_id: str, queue: str) -> FakeResult:
        self.sent.append((name, task_id))
        return self.result


@pytest.mark.parametrize("resends", [1, 2])
def test_producer_resends_the_same_task_id_on_timeout(resends: int) -> None:
    app = FakeApp([celery.exceptions.TimeoutError()] * resends + [7])
    assert producer.call(app, "flow_runs.count_flow_runs", {}, resends=resends, timeout=0.1) == 7  # type: ignore[arg-type]
    assert len(app.sent) == resends + 1 and len({task_id for _, task_id in app.sent}) == 1
    app = FakeApp([celery.exceptions.TimeoutError()] * (resends + 1))
    with pytest.raises(celery.exceptions.TimeoutError):
        producer.call(app, "flow_runs.count_flow_runs", {}, resends=resends, timeout=0.1)  # type: ignore[arg-type]


def test_failures_come_back_as_flowruns_errors() -> None:
    foreign_not_found = type("ObjectNotFoundError", (Exception,), {})("flow_run_id: no flow run with id x")
    error = producer._as_flowruns_error(foreign_not_found)
    assert isinstance(error, ObjectNotFoundError) and str(error) == "flow_run_id: no flow run with id x"
    assert isinstance(producer._as_flowruns_error(ValidationError("limit: no")), ValidationError)
    other = KeyError("x")
    assert producer._as_flowruns_error(other) is other
