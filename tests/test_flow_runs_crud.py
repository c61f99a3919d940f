"""create / read / update / delete of flow runs, as Prefect's model layer behaves."""

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import deployments, flow_runs, orm
from models.errors import ObjectNotFoundError
from models.schemas import actions, core, filters
from models.schemas.responses import FlowRunResponse
from tests.fixtures import make_flow_run


def test_create_flow_run_persists_fields_and_defaults(session: Session, flow: orm.Flow) -> None:
    run = flow_runs.create_flow_run(
        session, core.FlowRun(flow_id=flow.id, flow_version="1.0", parameters={"x": 1}, tags=["a"])
    )
    session.commit()
    session.expunge_all()
    stored = flow_runs.read_flow_run(session, run.id)
    assert stored is not None
    assert stored.flow_version == "1.0"
    assert stored.parameters == {"x": 1}
    assert stored.tags == ["a"]
    assert stored.state is None and stored.state_type is None
    assert stored.run_count == 0
    assert stored.name  # a generated slug
    assert stored.created.tzinfo is not None


def test_create_flow_run_gets_system_labels_from_flow(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow, labels={"env": "prod"})
    assert run.labels == {"team": "data", "prefect.flow.id": str(flow.id), "env": "prod"}


def test_create_flow_run_gets_system_labels_from_deployment(session: Session, flow: orm.Flow) -> None:
    deployment = deployments.create_deployment(
        session, actions.DeploymentCreate(name="d", flow_id=flow.id, labels={"tier": "gold"})
    )
    run = make_flow_run(session, flow, deployment_id=deployment.id)
    assert run.labels == {
        "team": "data",
        "tier": "gold",
        "prefect.flow.id": str(flow.id),
        "prefect.deployment.id": str(deployment.id),
    }


def test_create_with_same_idempotency_key_returns_first_run(session: Session, flow: orm.Flow) -> None:
    first = make_flow_run(session, flow, idempotency_key="k1", flow_version="first")
    second = make_flow_run(session, flow, idempotency_key="k1", flow_version="second")
    assert second.id == first.id
    assert second.flow_version == "first"
    count = session.execute(sa.select(sa.func.count()).select_from(orm.FlowRun)).scalar()
    assert count == 1


def test_same_idempotency_key_on_another_flow_creates_a_new_run(session: Session, flow: orm.Flow) -> None:
    from models import flows

    other = flows.create_flow(session, actions.FlowCreate(name="other"))
    first = make_flow_run(session, flow, idempotency_key="k1")
    second = make_flow_run(session, other, idempotency_key="k1")
    assert first.id != second.id


def test_create_with_unknown_flow_is_not_found(session: Session) -> None:
    with pytest.raises(ObjectNotFoundError, match="flow_id"):
        flow_runs.create_flow_run(session, core.FlowRun(flow_id=uuid.uuid4()))


def test_create_with_unknown_deployment_is_not_found(session: Session, flow: orm.Flow) -> None:
    with pytest.raises(ObjectNotFoundError, match="deployment_id"):
        flow_runs.create_flow_run(session, core.FlowRun(flow_id=flow.id, deployment_id=uuid.uuid4()))


def test_create_resolves_work_pool_and_queue_names(
    session: Session, flow: orm.Flow, work_queue: orm.WorkQueue
) -> None:
    run = flow_runs.create_flow_run(
        session,
        actions.FlowRunCreate(flow_id=flow.id, work_pool_name="pool-a", work_queue_name="queue-a"),
    )
    session.commit()
    assert run.work_queue_id == work_queue.id
    assert run.work_queue_name == "queue-a"
    assert run.work_queue.work_pool.name == "pool-a"


def test_create_with_pool_name_alone_uses_its_default_queue(
    session: Session, flow: orm.Flow, work_pool: orm.WorkPool
) -> None:
    run = flow_runs.create_flow_run(session, actions.FlowRunCreate(flow_id=flow.id, work_pool_name="pool-a"))
    assert run.work_queue_id == work_pool.default_queue_id
    # As Prefect's API stores it: the request named no queue, so the column stays empty (a
    # queue-name filter sees none); the response names the queue the run is in.
    assert run.work_queue_name is None
    response = FlowRunResponse.model_validate(run, from_attributes=True)
    assert (response.work_queue_name, response.work_pool_name) == ("default", "pool-a")
    assert response.work_pool_id == work_pool.id
    assert flow_runs.count_flow_runs(
        session, work_queue_filter=filters.WorkQueueFilter(name=filters.WorkQueueFilterName(any_=["default"]))
    ) == 1


def test_a_response_validated_from_an_orm_run_names_its_queue_and_pool(
    session: Session, flow: orm.Flow, work_pool: orm.WorkPool
) -> None:
    created = flow_runs.create_flow_run(
        session, actions.FlowRunCreate(flow_id=flow.id, work_pool_name="pool-a", work_queue_name="default")
    )
    session.commit()
    session.expunge_all()
    run = flow_runs.read_flow_run(session, created.id)

    response = FlowRunResponse.model_validate(run, from_attributes=True)

    assert (response.work_queue_id, response.work_queue_name) == (work_pool.default_queue_id, "default")
    assert (response.work_pool_id, response.work_pool_name) == (work_pool.id, "pool-a")


def test_create_with_unknown_queue_name_is_not_found(session: Session, flow: orm.Flow, work_pool: orm.WorkPool) -> None:
    with pytest.raises(ObjectNotFoundError, match="work_queue_name"):
        flow_runs.create_flow_run(
            session, actions.FlowRunCreate(flow_id=flow.id, work_pool_name="pool-a", work_queue_name="nope")
        )


def test_read_flow_run_of_unknown_id_is_none(session: Session) -> None:
    assert flow_runs.read_flow_run(session, uuid.uuid4()) is None


def test_read_flow_run_for_update_returns_the_run(session: Session, flow_run: orm.FlowRun) -> None:
    locked = flow_runs.read_flow_run(session, flow_run.id, for_update=True)
    assert locked is not None and locked.id == flow_run.id


def test_update_writes_only_the_fields_set(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow, flow_version="1", parameters={"a": 1}, tags=["keep"])
    assert flow_runs.update_flow_run(session, run.id, actions.FlowRunUpdate(flow_version="2"))
    session.commit()
    session.expunge_all()
    stored = flow_runs.read_flow_run(session, run.id)
    assert stored is not None
    assert stored.flow_version == "2"
    assert stored.parameters == {"a": 1}
    assert stored.tags == ["keep"]


def test_update_with_explicit_null_name_generates_a_new_name(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow, name="original")
    assert flow_runs.update_flow_run(session, run.id, actions.FlowRunUpdate(name=None))
    session.commit()
    session.expunge_all()
    stored = flow_runs.read_flow_run(session, run.id)
    assert stored is not None and stored.name and stored.name != "original"


def test_update_replaces_empirical_policy_wholesale(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow, empirical_policy={"retries": 3, "retry_delay": 10})
    flow_runs.update_flow_run(session, run.id, actions.FlowRunUpdate(empirical_policy={"retries": 1}))
    session.commit()
    session.expunge_all()
    stored = flow_runs.read_flow_run(session, run.id)
    assert stored is not None
    assert stored.empirical_policy.retries == 1
    assert stored.empirical_policy.retry_delay is None


def test_update_of_unknown_run_returns_false(session: Session) -> None:
    assert flow_runs.update_flow_run(session, uuid.uuid4(), actions.FlowRunUpdate(flow_version="x")) is False


def test_an_empty_update_still_marks_the_run_updated(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow)
    session.commit()
    before = run.updated
    assert flow_runs.update_flow_run(session, run.id, actions.FlowRunUpdate()) is True
    assert flow_runs.update_flow_run(session, uuid.uuid4(), actions.FlowRunUpdate()) is False
    session.commit()
    session.expunge_all()
    stored = flow_runs.read_flow_run(session, run.id)
    assert stored is not None and stored.updated > before


def test_update_refuses_unknown_fields() -> None:
    with pytest.raises(Exception, match="state_type"):
        actions.FlowRunUpdate.model_validate({"state_type": "RUNNING"})


def test_delete_flow_run_removes_it(session: Session, flow_run: orm.FlowRun) -> None:
    assert flow_runs.delete_flow_run(session, flow_run.id)
    session.commit()
    assert flow_runs.read_flow_run(session, flow_run.id) is None
    assert flow_runs.delete_flow_run(session, flow_run.id) is False


def test_delete_flow_runs_deletes_those_that_exist_and_names_them(session: Session, flow: orm.Flow) -> None:
    kept, first, second = (make_flow_run(session, flow) for _ in range(3))
    missing = uuid.uuid4()

    deleted = flow_runs.delete_flow_runs(session, [first.id, missing, second.id, first.id])
    session.commit()

    assert deleted == [first.id, second.id]
    remaining = session.execute(sa.select(orm.FlowRun.id)).scalars().all()
    assert remaining == [kept.id]
    assert flow_runs.delete_flow_runs(session, []) == []


def test_update_flow_run_labels_merges_into_the_runs_labels(session: Session, flow: orm.Flow) -> None:
    run = make_flow_run(session, flow, labels={"env": "prod", "owner": "ana"})
    session.commit()

    assert flow_runs.update_flow_run_labels(session, run.id, {"env": "dev", "tier": 1}) is True
    session.commit()
    session.expunge_all()

    stored = flow_runs.read_flow_run(session, run.id)
    assert stored is not None
    assert stored.labels == {"team": "data", "prefect.flow.id": str(flow.id), "env": "dev", "owner": "ana", "tier": 1}
    with pytest.raises(ObjectNotFoundError, match="flow_run_id"):
        flow_runs.update_flow_run_labels(session, uuid.uuid4(), {"env": "dev"})


def test_with_system_labels_for_flow_run_are_the_labels_a_create_gives(session: Session, flow: orm.Flow) -> None:
    body = actions.FlowRunCreate(flow_id=flow.id, labels={"env": "prod"})

    labels = flow_runs.with_system_labels_for_flow_run(session, body)

    assert labels == {"team": "data", "prefect.flow.id": str(flow.id), "env": "prod"}
    assert flow_runs.create_flow_run(session, body).labels == labels


def test_a_keyed_create_leaves_unset_job_variables_null_as_prefects_does(session: Session, flow: orm.Flow) -> None:
    keyed = flow_runs.create_flow_run(session, actions.FlowRunCreate(flow_id=flow.id, idempotency_key="k"))
    plain = flow_runs.create_flow_run(session, actions.FlowRunCreate(flow_id=flow.id))
    session.commit()
    session.expunge_all()

    assert flow_runs.read_flow_run(session, keyed.id).job_variables is None  # type: ignore[union-attr]
    assert flow_runs.read_flow_run(session, plain.id).job_variables == {}  # type: ignore[union-attr]


def test_schemas_default_to_empty_labels() -> None:
    flow_id = uuid.uuid4()
    assert core.FlowRun(flow_id=flow_id).labels == {}
    assert FlowRunResponse(flow_id=flow_id, labels=None).labels == {}
