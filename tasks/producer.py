"""Typed helpers for Python producers that have flowruns installed.

Each helper sends its task by name with JSON kwargs (exactly what a foreign producer sends),
waits for the result and parses it into the schema. A producer that gets no result in time
re-sends the same request with the same task id (`resends` times): the worker's inbox makes
every copy after the first return the recorded outcome. A failure re-raises flowruns'
`ObjectNotFoundError` / `ValidationError` with the worker's message.
"""

import datetime
import uuid
from typing import Any, TypeVar

import celery.exceptions
from celery import Celery
from pydantic import BaseModel, TypeAdapter

from models.errors import FlowrunsError, ObjectNotFoundError, ValidationError
from models.schemas.actions import (
    DeploymentCreate,
    FlowCreate,
    FlowRunCreate,
    FlowRunUpdate,
    StateCreate,
    TaskRunCreate,
    WorkPoolCreate,
    WorkQueueCreate,
)
from models.schemas.core import Deployment, Flow, TaskRun, WorkPool, WorkQueue
from models.schemas.filters import (
    DeploymentFilter,
    FlowFilter,
    FlowRunFilter,
    FlowRunFilters,
    TaskRunFilter,
    WorkPoolFilter,
    WorkQueueFilter,
)
from models.schemas.graph import Graph
from models.schemas.responses import DependencyResult, FlowRunResponse, OrchestrationResult
from models.schemas.sorting import FlowRunSort
from models.schemas.states import State
from models.settings import get_settings

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_RESENDS = 2

ERRORS_BY_NAME: dict[str, type[FlowrunsError]] = {
    "ObjectNotFoundError": ObjectNotFoundError,
    "ValidationError": ValidationError,
    "InvalidRequestError": ValidationError,
}

Parsed = TypeVar("Parsed")


def call(
    app: Celery | None,
    name: str,
    kwargs: dict[str, Any],
    *,
    task_id: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    resends: int = DEFAULT_RESENDS,
    queue: str | None = None,
) -> Any:
    """Send task `name` and return its JSON result; re-send under the same id on timeout.

    `app` None means flowruns' own app; `queue` defaults to `FLOWRUNS_TASK_QUEUE`.
    """
    app = app or _flowruns_app()
    task_id = task_id or str(uuid.uuid4())
    queue = queue or get_settings().task_queue
    for attempt in range(resends + 1):
        result = app.send_task(name, kwargs=kwargs, task_id=task_id, queue=queue)
        try:
            result.get(timeout=timeout, propagate=False)
        except celery.exceptions.TimeoutError:
            if attempt == resends:
                raise
            continue
        if result.failed():
            raise _as_flowruns_error(result.result)
        return result.result
    raise AssertionError("unreachable")  # pragma: no cover


def _flowruns_app() -> Celery:
    from tasks.worker_app import app

    return app


def _as_flowruns_error(error: Any) -> BaseException:
    """The worker's exception as flowruns' own class when it is one (matched by class name)."""
    if not isinstance(error, BaseException):
        return RuntimeError(f"task failed: {error!r}")
    known = ERRORS_BY_NAME.get(type(error).__name__)
    if known is None or isinstance(error, known):
        return error
    return known(str(error))


def _dump(model: BaseModel | None, **options: Any) -> Any:
    return None if model is None else model.model_dump(mode="json", **options)


def _parse(schema: type[Parsed] | Any, value: Any) -> Parsed:
    return TypeAdapter(schema).validate_python(value)  # type: ignore[no-any-return]


def create_flow_run(app: Celery | None, flow_run: FlowRunCreate, **options: Any) -> FlowRunResponse:
    return _parse(FlowRunResponse, call(app, "flow_runs.create_flow_run", {"flow_run": _dump(flow_run)}, **options))


def read_flow_run(app: Celery | None, flow_run_id: uuid.UUID, **options: Any) -> FlowRunResponse:
    result = call(app, "flow_runs.read_flow_run", {"flow_run_id": str(flow_run_id)}, **options)
    return _parse(FlowRunResponse, result)


def read_flow_runs(
    app: Celery | None,
    *,
    flow_filter: FlowFilter | None = None,
    flow_run_filter: FlowRunFilter | None = None,
    task_run_filter: TaskRunFilter | None = None,
    deployment_filter: DeploymentFilter | None = None,
    work_pool_filter: WorkPoolFilter | None = None,
    work_queue_filter: WorkQueueFilter | None = None,
    offset: int = 0,
    limit: int | None = None,
    sort: FlowRunSort = FlowRunSort.ID_DESC,
    **options: Any,
) -> list[FlowRunResponse]:
    filters = FlowRunFilters(
        flow_filter=flow_filter,
        flow_run_filter=flow_run_filter,
        task_run_filter=task_run_filter,
        deployment_filter=deployment_filter,
        work_pool_filter=work_pool_filter,
        work_queue_filter=work_queue_filter,
    )
    kwargs = _filter_kwargs(filters) | {"offset": offset, "limit": limit, "sort": sort.value}
    return _parse(list[FlowRunResponse], call(app, "flow_runs.read_flow_runs", kwargs, **options))


def count_flow_runs(
    app: Celery | None,
    *,
    flow_filter: FlowFilter | None = None,
    flow_run_filter: FlowRunFilter | None = None,
    task_run_filter: TaskRunFilter | None = None,
    deployment_filter: DeploymentFilter | None = None,
    work_pool_filter: WorkPoolFilter | None = None,
    work_queue_filter: WorkQueueFilter | None = None,
    **options: Any,
) -> int:
    filters = FlowRunFilters(
        flow_filter=flow_filter,
        flow_run_filter=flow_run_filter,
        task_run_filter=task_run_filter,
        deployment_filter=deployment_filter,
        work_pool_filter=work_pool_filter,
        work_queue_filter=work_queue_filter,
    )
    return int(call(app, "flow_runs.count_flow_runs", _filter_kwargs(filters), **options))


def _filter_kwargs(filters: FlowRunFilters) -> dict[str, Any]:
    """The bundle as the task's top-level kwargs: each filter given, with only the fields set on it."""
    return {name: _dump(value, exclude_unset=True) for name, value in filters.given().items()}


def update_flow_run(app: Celery | None, flow_run_id: uuid.UUID, flow_run: FlowRunUpdate, **options: Any) -> bool:
    """Only the fields set on `flow_run` are sent, so only those are written."""
    kwargs = {"flow_run_id": str(flow_run_id), "flow_run": _dump(flow_run, exclude_unset=True)}
    return bool(call(app, "flow_runs.update_flow_run", kwargs, **options))


def set_flow_run_state(
    app: Celery | None, flow_run_id: uuid.UUID, state: StateCreate, force: bool = False, **options: Any
) -> OrchestrationResult:
    kwargs = {"flow_run_id": str(flow_run_id), "state": _dump(state), "force": force}
    return _parse(OrchestrationResult, call(app, "flow_runs.set_flow_run_state", kwargs, **options))


def delete_flow_run(app: Celery | None, flow_run_id: uuid.UUID, **options: Any) -> bool:
    return bool(call(app, "flow_runs.delete_flow_run", {"flow_run_id": str(flow_run_id)}, **options))


def cleanup_flow_run_concurrency_slots(app: Celery | None, flow_run_id: uuid.UUID, **options: Any) -> None:
    call(app, "flow_runs.cleanup_flow_run_concurrency_slots", {"flow_run_id": str(flow_run_id)}, **options)


def read_task_run_dependencies(app: Celery | None, flow_run_id: uuid.UUID, **options: Any) -> list[DependencyResult]:
    result = call(app, "flow_runs.read_task_run_dependencies", {"flow_run_id": str(flow_run_id)}, **options)
    return _parse(list[DependencyResult], result)


def read_flow_run_graph(
    app: Celery | None, flow_run_id: uuid.UUID, since: datetime.datetime | None = None, **options: Any
) -> Graph:
    kwargs: dict[str, Any] = {"flow_run_id": str(flow_run_id)}
    if since is not None:
        kwargs["since"] = since.isoformat()
    return _parse(Graph, call(app, "flow_runs.read_flow_run_graph", kwargs, **options))


def read_flow_run_states(app: Celery | None, flow_run_id: uuid.UUID, **options: Any) -> list[State]:
    result = call(app, "flow_run_states.read_flow_run_states", {"flow_run_id": str(flow_run_id)}, **options)
    return _parse(list[State], result)


def create_flow(app: Celery | None, flow: FlowCreate, **options: Any) -> Flow:
    return _parse(Flow, call(app, "flows.create_flow", {"flow": _dump(flow)}, **options))


def create_deployment(app: Celery | None, deployment: DeploymentCreate, **options: Any) -> Deployment:
    result = call(app, "deployments.create_deployment", {"deployment": _dump(deployment)}, **options)
    return _parse(Deployment, result)


def read_deployment(app: Celery | None, deployment_id: uuid.UUID, **options: Any) -> Deployment:
    result = call(app, "deployments.read_deployment", {"deployment_id": str(deployment_id)}, **options)
    return _parse(Deployment, result)


def create_work_pool(app: Celery | None, work_pool: WorkPoolCreate, **options: Any) -> WorkPool:
    return _parse(WorkPool, call(app, "work_pools.create_work_pool", {"work_pool": _dump(work_pool)}, **options))


def create_work_queue(app: Celery | None, work_queue: WorkQueueCreate, **options: Any) -> WorkQueue:
    result = call(app, "work_queues.create_work_queue", {"work_queue": _dump(work_queue)}, **options)
    return _parse(WorkQueue, result)


def create_task_run(app: Celery | None, task_run: TaskRunCreate, **options: Any) -> TaskRun:
    return _parse(TaskRun, call(app, "task_runs.create_task_run", {"task_run": _dump(task_run)}, **options))


def set_task_run_state(
    app: Celery | None, task_run_id: uuid.UUID, state: StateCreate, force: bool = False, **options: Any
) -> OrchestrationResult:
    kwargs = {"task_run_id": str(task_run_id), "state": _dump(state), "force": force}
    return _parse(OrchestrationResult, call(app, "task_runs.set_task_run_state", kwargs, **options))
