"""Deployments and the concurrency limit each may carry."""

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.errors import ObjectNotFoundError
from models.schemas.actions import DeploymentCreate, WorkQueueCreate
from models.schemas.core import Deployment
from models.work_pools import DEFAULT_POOL_NAME
from models.work_queues import create_work_queue, read_work_queue_by_name


_DEPLOYMENT_COLUMNS = {
    "name", "flow_id", "paused", "enforce_parameter_schema", "parameters", "tags",
    "concurrency_options", "infrastructure_document_id", "description", "path", "version",
    "entrypoint", "job_variables", "created_by",
}
"""The request fields written as they are (only those the request set); the queue's columns and
the labels are derived, the limit has a row of its own."""

_KEPT_ON_UPSERT = {"created_by"}
"""Columns only the first create writes, as Prefect's ON CONFLICT update leaves them."""


def create_deployment(session: Session, deployment: DeploymentCreate | Deployment) -> orm.Deployment:
    """Create the deployment, or update the one with the same flow and name (an upsert, as Prefect).

    An upsert changes only what the request set: its fields, the queue when it names a pool or
    queue, and the limit row named `deployment:<id>` (created, resized or dropped) when it set
    `concurrency_limit`. The labels are always recomputed: the flow's, the system label, the
    request's. Returns the row as stored, its queue, pool and limit read back.
    """
    flow = session.get(orm.Flow, deployment.flow_id)
    if flow is None:
        raise ObjectNotFoundError(f"flow_id: no flow with id {deployment.flow_id}")
    fields = _requested_columns(deployment)
    fields["labels"] = _labels_with_system_labels(flow, deployment.labels)
    queue = _resolve_queue(session, deployment.work_pool_name, deployment.work_queue_name)
    if queue is not None:
        fields["work_queue_id"] = queue.id
        fields["work_queue_name"] = queue.name
    row = _read_deployment_by_name(session, deployment.flow_id, deployment.name)
    if row is None:
        row = orm.Deployment(id=uuid.uuid4(), **fields)
        session.add(row)
    else:
        for key in fields.keys() - _KEPT_ON_UPSERT:
            setattr(row, key, fields[key])
    _apply_requested_limit(session, row, deployment)
    session.flush()
    session.refresh(row)  # the relationships still hold the queue and limit from before an upsert
    return row


def _requested_columns(deployment: DeploymentCreate | Deployment) -> dict[str, Any]:
    """The deployment's own columns the request set explicitly (`name` and `flow_id` always are)."""
    columns = _DEPLOYMENT_COLUMNS & set(type(deployment).model_fields)
    return deployment.model_dump(include=columns, exclude_unset=True)


def _labels_with_system_labels(flow: orm.Flow, labels: dict[str, Any] | None) -> dict[str, Any]:
    """The flow's labels, the system label, then the deployment's own; later keys win."""
    return {**(flow.labels or {}), "prefect.flow.id": str(flow.id), **(labels or {})}


def _read_deployment_by_name(session: Session, flow_id: uuid.UUID, name: str) -> orm.Deployment | None:
    return session.execute(
        sa.select(orm.Deployment).where(orm.Deployment.flow_id == flow_id, orm.Deployment.name == name)
    ).scalar_one_or_none()


def _apply_requested_limit(session: Session, row: orm.Deployment, deployment: DeploymentCreate | Deployment) -> None:
    """Link the global limit the request names, else set the deployment's own limit if it was sent."""
    global_limit_id = getattr(deployment, "global_concurrency_limit_id", None)
    if global_limit_id is not None:
        if session.get(orm.ConcurrencyLimit, global_limit_id) is None:
            raise ObjectNotFoundError(f"global_concurrency_limit_id: no concurrency limit with id {global_limit_id}")
        row.concurrency_limit_id = global_limit_id
    elif "concurrency_limit" in deployment.model_fields_set:
        _set_concurrency_limit(session, row, deployment.concurrency_limit)


def _set_concurrency_limit(session: Session, deployment: orm.Deployment, limit: int | None) -> None:
    """Create, resize (keeping active slots) or drop the deployment's own limit row."""
    deployment.concurrency_limit = limit
    current = session.get(orm.ConcurrencyLimit, deployment.concurrency_limit_id) if deployment.concurrency_limit_id else None
    if limit is None:
        if current is not None and current.name == f"deployment:{deployment.id}":
            session.delete(current)
        deployment.concurrency_limit_id = None
        deployment.global_concurrency_limit = None
        return
    if current is None:
        current = orm.ConcurrencyLimit(id=uuid.uuid4(), name=f"deployment:{deployment.id}", limit=limit)
        session.add(current)
        session.flush()
    else:
        current.limit = limit
    deployment.concurrency_limit_id = current.id
    deployment.global_concurrency_limit = current


def _resolve_queue(session: Session, work_pool_name: str | None, work_queue_name: str | None) -> orm.WorkQueue | None:
    """The deployment's queue; a missing queue in a known pool is created, as Prefect does."""
    if work_pool_name is None and work_queue_name is None:
        return None
    pool_name = work_pool_name or DEFAULT_POOL_NAME
    if work_pool_name is not None:
        pool = session.execute(sa.select(orm.WorkPool).where(orm.WorkPool.name == work_pool_name)).scalar_one_or_none()
        if pool is None:
            raise ObjectNotFoundError(f"work_pool_name: no work pool named {work_pool_name!r}")
        if work_queue_name is None:
            return session.get(orm.WorkQueue, pool.default_queue_id) if pool.default_queue_id else None
    queue_name = work_queue_name or "default"
    queue = read_work_queue_by_name(session, queue_name, pool_name)
    if queue is None:
        queue = create_work_queue(session, WorkQueueCreate(name=queue_name, work_pool_name=pool_name))
    return queue


def read_deployment(session: Session, deployment_id: uuid.UUID) -> orm.Deployment | None:
    return session.get(orm.Deployment, deployment_id)


def delete_deployment(session: Session, deployment_id: uuid.UUID) -> bool:
    """Delete the deployment and its own limit row (runs keep their deployment id, as Prefect)."""
    deployment = session.get(orm.Deployment, deployment_id)
    if deployment is None:
        return False
    limit_id = deployment.concurrency_limit_id
    session.delete(deployment)
    if limit_id is not None:
        limit = session.get(orm.ConcurrencyLimit, limit_id)
        if limit is not None and limit.name == f"deployment:{deployment_id}":
            session.delete(limit)
    session.flush()
    return True
