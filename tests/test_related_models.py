"""Flows, deployments, work pools and queues: the rows runs point at."""

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import deployments, flow_runs, flows, orm, work_pools, work_queues
from models.errors import ObjectNotFoundError, ValidationError
from models.schemas import actions, core


def test_create_flow_twice_returns_the_existing_flow(session: Session) -> None:
    first = flows.create_flow(session, actions.FlowCreate(name="etl", tags=["a"]))
    second = flows.create_flow(session, actions.FlowCreate(name="etl", tags=["b"]))
    assert second.id == first.id
    assert second.tags == ["a"]
    assert session.execute(sa.select(sa.func.count()).select_from(orm.Flow)).scalar() == 1


def test_create_flow_accepts_the_core_schema(session: Session) -> None:
    flow = flows.create_flow(session, core.Flow(name="from-core", tags=["x"], labels={"k": "v"}))
    assert flow.name == "from-core" and flow.tags == ["x"] and flow.labels == {"k": "v"}


def test_deployment_limit_materialises_as_a_named_limit_row(session: Session, flow: orm.Flow) -> None:
    deployment = deployments.create_deployment(
        session, actions.DeploymentCreate(name="d", flow_id=flow.id, concurrency_limit=3)
    )
    limit = session.get(orm.ConcurrencyLimit, deployment.concurrency_limit_id)
    assert limit is not None
    assert (limit.name, limit.limit, limit.active_slots) == (f"deployment:{deployment.id}", 3, 0)
    assert deployment.concurrency_limit == 3


def test_deployment_accepts_the_core_schema(session: Session, flow: orm.Flow) -> None:
    deployment = deployments.create_deployment(
        session, core.Deployment(name="core", flow_id=flow.id, concurrency_limit=2, tags=["t"])
    )
    assert deployment.tags == ["t"]
    assert deployment.global_concurrency_limit is not None
    assert deployment.global_concurrency_limit.limit == 2


def test_recreating_a_deployment_resizes_its_limit_and_keeps_active_slots(session: Session, flow: orm.Flow) -> None:
    deployment = deployments.create_deployment(
        session, actions.DeploymentCreate(name="d", flow_id=flow.id, concurrency_limit=3)
    )
    limit = session.get(orm.ConcurrencyLimit, deployment.concurrency_limit_id)
    assert limit is not None
    limit.active_slots = 1
    session.flush()
    again = deployments.create_deployment(
        session, actions.DeploymentCreate(name="d", flow_id=flow.id, concurrency_limit=5)
    )
    assert again.id == deployment.id
    assert again.concurrency_limit_id == limit.id
    assert (limit.limit, limit.active_slots) == (5, 1)


def test_removing_a_deployment_limit_deletes_its_row(session: Session, flow: orm.Flow) -> None:
    deployment = deployments.create_deployment(
        session, actions.DeploymentCreate(name="d", flow_id=flow.id, concurrency_limit=3)
    )
    limit_id = deployment.concurrency_limit_id
    deployments.create_deployment(session, actions.DeploymentCreate(name="d", flow_id=flow.id, concurrency_limit=None))
    assert deployment.concurrency_limit_id is None
    assert session.get(orm.ConcurrencyLimit, limit_id) is None


@pytest.mark.parametrize("limit", [0, -1])
def test_deployment_limit_below_one_is_refused(limit: int) -> None:
    with pytest.raises(Exception, match="concurrency_limit"):
        actions.DeploymentCreate(name="d", flow_id=uuid.uuid4(), concurrency_limit=limit)


def test_deployment_of_unknown_flow_is_not_found(session: Session) -> None:
    with pytest.raises(ObjectNotFoundError, match="flow_id"):
        deployments.create_deployment(session, actions.DeploymentCreate(name="d", flow_id=uuid.uuid4()))


def test_deployment_in_unknown_pool_is_not_found(session: Session, flow: orm.Flow) -> None:
    with pytest.raises(ObjectNotFoundError, match="work_pool_name"):
        deployments.create_deployment(
            session, actions.DeploymentCreate(name="d", flow_id=flow.id, work_pool_name="nope")
        )


def test_deployment_with_a_new_queue_name_creates_it_in_the_pool(
    session: Session, flow: orm.Flow, work_pool: orm.WorkPool
) -> None:
    deployment = deployments.create_deployment(
        session,
        actions.DeploymentCreate(name="d", flow_id=flow.id, work_pool_name="pool-a", work_queue_name="fresh"),
    )
    queue = session.get(orm.WorkQueue, deployment.work_queue_id)
    assert queue is not None and (queue.name, queue.work_pool_id) == ("fresh", work_pool.id)
    assert deployment.work_pool_name == "pool-a"


def test_work_pool_gets_a_default_queue(session: Session) -> None:
    pool = work_pools.create_work_pool(session, actions.WorkPoolCreate(name="p", type="process"))
    queue = session.get(orm.WorkQueue, pool.default_queue_id)
    assert queue is not None and (queue.name, queue.priority, queue.description) == (
        "default", 1, "The work pool's default queue.")


@pytest.mark.parametrize(("pool_type", "paused", "status"), [
    ("process", True, "PAUSED"), ("process", False, "NOT_READY"), ("prefect-agent", True, "NOT_READY"),
])
def test_a_work_pool_created_paused_is_paused_unless_it_is_an_agent_pool(
    session: Session, pool_type: str, paused: bool, status: str
) -> None:
    pool = work_pools.create_work_pool(session, actions.WorkPoolCreate(name="p", type=pool_type, is_paused=paused))
    assert pool.status == status


def test_work_pool_name_is_unique(session: Session) -> None:
    work_pools.create_work_pool(session, actions.WorkPoolCreate(name="p"))
    with pytest.raises(ValidationError, match="work_pool.name"):
        work_pools.create_work_pool(session, actions.WorkPoolCreate(name="p"))


def test_work_queue_priority_defaults_to_last(session: Session, work_pool: orm.WorkPool) -> None:
    second = work_queues.create_work_queue(session, actions.WorkQueueCreate(name="b", work_pool_name="pool-a"))
    third = work_queues.create_work_queue(session, actions.WorkQueueCreate(name="c", work_pool_name="pool-a"))
    assert (second.priority, third.priority) == (2, 3)


def priorities(session: Session, pool_name: str) -> dict[str, int]:
    pool = work_pools.read_work_pool_by_name(session, pool_name)
    assert pool is not None
    queues = session.execute(sa.select(orm.WorkQueue).where(orm.WorkQueue.work_pool_id == pool.id)).scalars()
    return {queue.name: queue.priority for queue in queues}


def test_work_queue_without_a_priority_takes_the_first_one_free(session: Session, work_pool: orm.WorkPool) -> None:
    work_queues.create_work_queue(session, actions.WorkQueueCreate(name="third", work_pool_name="pool-a", priority=3))
    work_queues.create_work_queue(session, actions.WorkQueueCreate(name="gap", work_pool_name="pool-a"))
    work_queues.create_work_queue(session, actions.WorkQueueCreate(name="last", work_pool_name="pool-a"))
    assert priorities(session, "pool-a") == {"default": 1, "gap": 2, "third": 3, "last": 4}


def test_a_taken_priority_moves_the_queues_from_it_down_keeping_their_order(
    session: Session, work_pool: orm.WorkPool
) -> None:
    for name in ("b", "c"):
        work_queues.create_work_queue(session, actions.WorkQueueCreate(name=name, work_pool_name="pool-a"))
    work_queues.create_work_queue(session, actions.WorkQueueCreate(name="far", work_pool_name="pool-a", priority=9))
    work_queues.create_work_queue(session, actions.WorkQueueCreate(name="top", work_pool_name="pool-a", priority=1))
    assert priorities(session, "pool-a") == {"top": 1, "default": 2, "b": 3, "c": 4, "far": 9}
    work_queues.create_work_queue(session, actions.WorkQueueCreate(name="mid", work_pool_name="pool-a", priority=3))
    assert priorities(session, "pool-a") == {"top": 1, "default": 2, "mid": 3, "b": 4, "c": 5, "far": 9}


def test_the_default_queue_asked_for_on_an_empty_database_is_the_new_default_pools(session: Session) -> None:
    queue = work_queues.create_work_queue(session, actions.WorkQueueCreate(name="default"))
    pool = work_pools.read_work_pool_by_name(session, work_pools.DEFAULT_POOL_NAME)
    assert pool is not None and pool.type == "prefect-agent" and queue.id == pool.default_queue_id
    with pytest.raises(ValidationError, match="work_queue.name"):  # once the pool exists, it is taken
        work_queues.create_work_queue(session, actions.WorkQueueCreate(name="default"))


def test_empty_pool_and_queue_names_count_as_none_given(session: Session, work_pool: orm.WorkPool) -> None:
    assert work_queues.resolve_work_queue(session, "", "") is None
    assert work_queues.resolve_work_queue(session, "pool-a", "") == session.get(orm.WorkQueue, work_pool.default_queue_id)


def test_a_run_with_an_empty_queue_name_gets_the_pools_default_queue_and_keeps_the_name_sent(
    session: Session, flow: orm.Flow, work_pool: orm.WorkPool
) -> None:
    run = flow_runs.create_flow_run(session, actions.FlowRunCreate(flow_id=flow.id, work_pool_name="pool-a",
                                                                    work_queue_name=""))
    session.flush()
    assert (run.work_queue_id, run.work_queue_name) == (work_pool.default_queue_id, "")


def test_work_queue_without_pool_goes_to_the_default_pool(session: Session) -> None:
    queue = work_queues.create_work_queue(session, actions.WorkQueueCreate(name="q"))
    assert queue.work_pool.name == work_pools.DEFAULT_POOL_NAME


def test_work_queue_in_unknown_pool_is_not_found(session: Session) -> None:
    with pytest.raises(ObjectNotFoundError, match="work_pool_name"):
        work_queues.create_work_queue(session, actions.WorkQueueCreate(name="q", work_pool_name="nope"))


def test_work_queue_name_is_unique_within_its_pool(session: Session, work_pool: orm.WorkPool) -> None:
    work_queues.create_work_queue(session, actions.WorkQueueCreate(name="q", work_pool_name="pool-a"))
    with pytest.raises(ValidationError, match="work_queue.name"):
        work_queues.create_work_queue(session, actions.WorkQueueCreate(name="q", work_pool_name="pool-a"))
