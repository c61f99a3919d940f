"""The fast ways of building FlowRun responses give exactly what validation gives.

`FlowRunResponse.from_orm_run` takes a loaded run's values as they are,
`read_flow_run_responses` reads plain rows, and `read_flow_run_json` has PostgreSQL build each
run's JSON (elsewhere it dumps the plain-row responses); the reference is pydantic's
`from_attributes` validation of the ORM run, its queue's name and pool set as `from_orm_run`
sets them, and for the JSON that reference's `model_dump(mode="json")`, compared as orjson
writes both: same fields in the same order, same values of the same JSON types.
"""

import datetime
import json
import uuid
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.flow_run_queries import read_flow_run_json, read_flow_run_responses, read_flow_runs
from models.schemas import core
from models.schemas.core import CreatedBy, FlowRunPolicy
from models.schemas.filters import FlowRunFilters
from models.schemas.responses import FlowRunResponse
from models.schemas.sorting import FlowRunSort
from models.schemas.states import StateDetails, StateType
from tests import databases
from tests.test_flow_run_filters import World, build_world, parse_filters
from tests.test_flow_run_read_count import chosen_bodies, combinations_to_check

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
FULL = parse_filters({"flow_run_filter": {"name": {"any_": ["full"]}}})
"""Selects the run `full_run` builds (not its parent)."""
FULL_BUNDLE = FlowRunFilters(**FULL)
EVERY_RUN = FlowRunFilters()
NOW_DEPENDENT = frozenset({"estimated_run_time", "estimated_start_time_delta"})
"""Computed at read time from the clock for a running or late run."""


def reference(run: orm.FlowRun) -> FlowRunResponse:
    response = FlowRunResponse.model_validate(run, from_attributes=True)
    if run.work_queue is not None:
        response.work_queue_name = run.work_queue.name
        response.work_pool_id = run.work_queue.work_pool_id
        response.work_pool_name = run.work_queue.work_pool.name
    return response


def assert_same(
    response: FlowRunResponse, expected: FlowRunResponse, exclude: frozenset[str] = frozenset()
) -> None:
    assert response.model_dump_json(exclude=exclude) == expected.model_dump_json(exclude=exclude)
    assert response.model_dump(mode="json", exclude=exclude) == expected.model_dump(
        mode="json", exclude=exclude
    )
    assert response.model_dump(exclude=exclude) == expected.model_dump(exclude=exclude)
    assert response.model_fields_set == expected.model_fields_set
    assert list(response.__dict__) == list(expected.__dict__)
    if response.state is not None and expected.state is not None:
        assert response.state.model_fields_set == expected.state.model_fields_set
        assert list(response.state.__dict__) == list(expected.state.__dict__)


def assert_same_json(document: dict[str, Any], expected: FlowRunResponse, exclude: frozenset[str] = frozenset()) -> None:
    """`document` is `expected.model_dump(mode="json")`, field for field, in order and JSON type."""
    wanted = expected.model_dump(mode="json", exclude=exclude)
    assert as_text({name: value for name, value in document.items() if name not in exclude}) == as_text(wanted)


def as_text(value: Any) -> str:
    """JSON text that tells an int from a float and keeps the key order (orjson's; the standard
    library's for what orjson cannot write, integers beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value)


def full_run(session: Session, state_type: StateType, **state_details: Any) -> None:
    """A run with every column set, a queue in a pool, a parent task run and a current state."""
    flow = orm.Flow(name=f"flow-{uuid.uuid4().hex[:6]}")
    pool = orm.WorkPool(name=f"pool-{uuid.uuid4().hex[:6]}", type="process")
    session.add_all([flow, pool])
    session.flush()
    queue = orm.WorkQueue(name="queue", work_pool_id=pool.id)
    deployment = orm.Deployment(name="deployment", flow_id=flow.id)
    parent = orm.FlowRun(name="parent", flow_id=flow.id)
    session.add_all([queue, deployment, parent])
    session.flush()
    task = orm.TaskRun(name="task", flow_run_id=parent.id, task_key="t", dynamic_key="0")
    session.add(task)
    session.flush()
    run = orm.FlowRun(
        name="full", flow_id=flow.id, deployment_id=deployment.id, deployment_version="d1",
        work_queue_id=queue.id, work_queue_name="stale-name", flow_version="f1",
        parameters={"x": 1, "nested": {"y": [1.5, None, "z"]}}, idempotency_key="key",
        context={"source": "test"},
        empirical_policy=FlowRunPolicy(retries=2, retry_delay=5, pause_keys={"p"}, resuming=True,
                                       retry_type="reschedule"),
        tags=["a", "b"], labels={"team": "data", "tier": 1, "ratio": 0.5, "on": True},
        created_by=CreatedBy(id=uuid.uuid4(), type="DEPLOYMENT", display_value="deployment"),
        infrastructure_pid="pid-1", job_variables={"image": "python"},
        infrastructure_document_id=uuid.uuid4(), parent_task_run_id=task.id, auto_scheduled=True,
        state_type=state_type, state_name=state_type.value.capitalize(), state_timestamp=T0,
        run_count=2, expected_start_time=T0, next_scheduled_start_time=T0 + datetime.timedelta(hours=1),
        start_time=T0 + datetime.timedelta(minutes=5), end_time=T0 + datetime.timedelta(minutes=9),
        total_run_time=datetime.timedelta(seconds=90.25),
    )
    session.add(run)
    session.flush()
    state = orm.FlowRunState(
        type=state_type, name=state_type.value.capitalize(), timestamp=T0, message="why",
        data={"result": [1, 2]},
        state_details=StateDetails(flow_run_id=run.id, cache_key="c", retriable=True, **state_details),
    )
    run.set_state(state)
    session.commit()
    session.expunge_all()


@pytest.mark.parametrize(
    ("state_type", "state_details"),
    [
        (StateType.COMPLETED, {}),
        (StateType.RUNNING, {}),
        (StateType.SCHEDULED, {"scheduled_time": T0}),
        (StateType.PAUSED, {"pause_timeout": T0, "pause_key": "k"}),
    ],
    ids=["completed", "running", "scheduled", "paused"],
)
def test_a_run_with_every_field_set_reads_as_validation_gives_it(
    session: Session, state_type: StateType, state_details: dict[str, Any]
) -> None:
    full_run(session, state_type, **state_details)
    (run,) = read_flow_runs(session, **FULL)
    exclude = NOW_DEPENDENT if state_type == StateType.RUNNING else frozenset()
    expected = reference(run)
    assert expected.work_queue_name == "queue" and expected.work_pool_name is not None
    assert_same(FlowRunResponse.from_orm_run(run), expected, exclude)
    session.expunge_all()
    (response,) = read_flow_run_responses(session, FULL_BUNDLE)
    assert_same(response, expected, exclude)
    (document,) = read_flow_run_json(session, FULL_BUNDLE)
    assert_same_json(document, expected, exclude)


def test_a_run_with_nothing_optional_set_reads_as_validation_gives_it(session: Session) -> None:
    flow = orm.Flow(name="bare")
    session.add(flow)
    session.flush()
    session.add(orm.FlowRun(name="bare", flow_id=flow.id, labels=None, job_variables=None))
    session.commit()
    session.expunge_all()
    (run,) = read_flow_runs(session)
    assert run.state is None and run.work_queue is None
    expected = reference(run)
    assert_same(FlowRunResponse.from_orm_run(run), expected)
    (response,) = read_flow_run_responses(session, EVERY_RUN)
    assert_same(response, expected)
    (document,) = read_flow_run_json(session, EVERY_RUN)
    assert_same_json(document, expected)


def test_a_scheduled_state_without_its_time_is_validated(session: Session) -> None:
    """Validation fills in the scheduled time (the clock's): the fast paths defer to it."""
    full_run(session, StateType.SCHEDULED)
    for response in [
        FlowRunResponse.from_orm_run(read_flow_runs(session, **FULL)[0]),
        read_flow_run_responses(session, FULL_BUNDLE)[0],
    ]:
        assert response.state is not None and response.state.state_details.scheduled_time is not None
    (document,) = read_flow_run_json(session, FULL_BUNDLE)
    assert document["state"]["state_details"]["scheduled_time"] is not None

def test_values_assigned_in_python_are_validated(session: Session) -> None:
    """A run built in this session holds what the code assigned (a dict for `created_by`), not
    what a load gives: it is validated, as before."""
    flow = orm.Flow(name="assigned")
    session.add(flow)
    session.flush()
    run = orm.FlowRun(name="assigned", flow_id=flow.id, created_by={"id": uuid.uuid4(), "type": "USER"})
    session.add(run)
    session.commit()
    response = FlowRunResponse.from_orm_run(run)
    assert isinstance(response.created_by, CreatedBy)
    assert_same(response, reference(run))


def test_the_response_shares_no_list_or_dict_with_the_run(session: Session) -> None:
    full_run(session, StateType.COMPLETED)
    (run,) = read_flow_runs(session, **FULL)
    response = FlowRunResponse.from_orm_run(run)
    response.tags.append("extra")
    response.parameters["extra"] = 1
    assert run.tags == ["a", "b"] and "extra" not in run.parameters


def test_plain_row_responses_see_the_sessions_unflushed_changes(session: Session) -> None:
    full_run(session, StateType.COMPLETED)
    (run,) = read_flow_runs(session, **FULL)
    run.tags = ["changed"]
    (response,) = read_flow_run_responses(session, FULL_BUNDLE)
    assert response.tags == ["changed"]
    (document,) = read_flow_run_json(session, FULL_BUNDLE)
    assert document["tags"] == ["changed"]


def test_a_schema_run_is_validated_from_its_attributes(session: Session) -> None:
    run = core.FlowRun(flow_id=uuid.uuid4(), name="schema", tags=["t"])
    response = FlowRunResponse.from_orm_run(run)
    assert response.name == "schema" and response.tags == ["t"] and response.work_pool_id is None


@pytest.fixture
def world(session: Session) -> World:
    return build_world(session)


def test_plain_row_responses_equal_the_orm_path_for_every_filter_combination(
    session: Session, world: World
) -> None:
    checked = 0
    for choice in combinations_to_check():
        bodies = chosen_bodies(choice)
        for sort in (FlowRunSort.ID_DESC, FlowRunSort.NAME_ASC):
            session.expunge_all()
            filters = parse_filters(bodies)
            expected = [reference(run) for run in read_flow_runs(session, sort=sort, **filters)]
            responses = read_flow_run_responses(session, FlowRunFilters(**filters), sort=sort)
            assert [r.id for r in responses] == [r.id for r in expected]
            for response, reference_response in zip(responses, expected):
                assert_same(response, reference_response, NOW_DEPENDENT)
            documents = read_flow_run_json(session, FlowRunFilters(**filters), sort=sort)
            assert [document["id"] for document in documents] == [str(r.id) for r in expected]
            for document, reference_response in zip(documents, expected):
                assert_same_json(document, reference_response, NOW_DEPENDENT)
            checked += bool(expected)
    assert checked > 50


def test_plain_row_responses_page_as_the_orm_path(session: Session, world: World) -> None:
    task_run_filter = parse_filters({"task_run_filter": {}})
    for filters, page in [({}, {"offset": 1, "limit": 2}), (task_run_filter, {"offset": 0, "limit": 1})]:
        names = [run.name for run in read_flow_runs(session, sort=FlowRunSort.NAME_DESC, **filters, **page)]
        bundle = FlowRunFilters(**filters)
        responses = read_flow_run_responses(session, bundle, sort=FlowRunSort.NAME_DESC, **page)
        assert [response.name for response in responses] == names
        documents = read_flow_run_json(session, bundle, sort=FlowRunSort.NAME_DESC, **page)
        assert [document["name"] for document in documents] == names


# --------------------------------------------------------------------------- the JSON read, edge values


def only_run_json(session: Session) -> tuple[dict[str, Any], FlowRunResponse]:
    """The one run's document and its reference."""
    session.expunge_all()
    (document,) = read_flow_run_json(session, EVERY_RUN)
    (run,) = read_flow_runs(session)
    return document, reference(run)


def bare_run(session: Session, **columns: Any) -> orm.FlowRun:
    flow = orm.Flow(name=f"flow-{uuid.uuid4().hex[:6]}")
    session.add(flow)
    session.flush()
    run = orm.FlowRun(flow_id=flow.id, **{"name": "bare", **columns})
    session.add(run)
    session.commit()
    return run


def store_raw(session: Session, table: str, column: str, row_id: uuid.UUID, value: Any) -> None:
    """Write `value` as the column's stored JSON, past the column type's validation."""
    placeholder = "CAST(:value AS jsonb)" if databases.test_dialect() == "postgresql" else ":value"
    session.execute(
        sa.text(f"UPDATE {table} SET {column} = {placeholder} WHERE id = :id"),
        {"value": None if value is None else orjson.dumps(value).decode(), "id": row_id.hex if databases.test_dialect() == "sqlite" else row_id},
    )
    session.commit()


def test_values_of_every_json_kind_read_as_validation_gives_them(session: Session) -> None:
    """Big integers (beyond 64 bits), floats small and large, unicode, quotes and control characters
    in user JSON and text columns; timestamps with and without microseconds; odd durations."""
    awkward = "naïve ✓ \"quoted\" back\\slash\nnew line\ttab\x01 \U0001f600"
    moment = datetime.datetime(2024, 2, 29, 23, 59, 59, 1, tzinfo=datetime.timezone.utc)
    bare_run(
        session, name=awkward, flow_version=awkward, tags=[awkward, "t"],
        parameters={"big": 2**70, "negative": -(2**65), "edge": 2**63, "huge": 1e300, "tiny": 1e-7,
                    "third": 1 / 3, "zero": 0.0, "int": 3, "text": awkward, "nested": [{"a": None, "b": [True]}]},
        context={"x": 12345678901234567890123}, labels={"float": 0.5, "int": 2, "bool": False, "str": awkward},
        created=moment, updated=moment.replace(microsecond=500000), expected_start_time=moment,
        start_time=moment.replace(microsecond=0), end_time=moment + datetime.timedelta(days=3),
        total_run_time=datetime.timedelta(days=3, seconds=1, microseconds=7), state_type=StateType.COMPLETED,
    )
    document, expected = only_run_json(session)
    assert_same_json(document, expected)
    assert document["parameters"]["big"] == 2**70 and document["context"]["x"] == 12345678901234567890123


def test_stored_objects_missing_fields_read_with_their_defaults(session: Session) -> None:
    """State details and a policy stored before a field existed (or by hand): the field's default."""
    run = bare_run(session)
    state = orm.FlowRunState(type=StateType.RUNNING, name="Running", timestamp=T0, state_details=StateDetails())
    run.set_state(state)
    session.commit()
    store_raw(session, "flow_run_state", "state_details", state.id, {"flow_run_id": str(run.id), "pause_key": "k"})
    store_raw(session, "flow_run", "empirical_policy", run.id, {"retries": 2})
    store_raw(session, "flow_run", "created_by", run.id, {"type": "USER"})
    document, expected = only_run_json(session)
    assert_same_json(document, expected, NOW_DEPENDENT)
    assert document["state"]["state_details"]["pause_reschedule"] is False


def test_values_validation_changes_are_validated(session: Session) -> None:
    """A policy whose deprecated retry fields validation back-fills, a Scheduled state without its
    time, an empty state name: the JSON read gives what validation gives (the time, the clock's)."""
    run = bare_run(session)
    state = orm.FlowRunState(type=StateType.SCHEDULED, name="Scheduled", timestamp=T0, state_details=StateDetails())
    run.set_state(state)
    session.commit()
    store_raw(session, "flow_run", "empirical_policy", run.id,
              {"max_retries": 3, "retries": 0, "retry_delay_seconds": 5.0, "retry_delay": None})
    session.execute(sa.update(orm.FlowRunState).where(orm.FlowRunState.id == state.id).values(name=""))
    session.commit()
    document, expected = only_run_json(session)
    assert document["empirical_policy"]["retries"] == expected.empirical_policy.retries == 3
    assert document["empirical_policy"]["retry_delay"] == expected.empirical_policy.retry_delay == 5
    assert document["state"]["state_details"]["scheduled_time"] is not None
    assert expected.state is not None and expected.state.state_details.scheduled_time is not None
    document["state"]["state_details"]["scheduled_time"] = expected.state.state_details.scheduled_time = None
    assert_same_json(document, expected, NOW_DEPENDENT)


def test_a_stored_json_null_created_by_reads_as_none(session: Session) -> None:
    run = bare_run(session)
    store_raw(session, "flow_run", "created_by", run.id, None)
    document, expected = only_run_json(session)
    assert document["created_by"] is None
    assert_same_json(document, expected, NOW_DEPENDENT)


def test_the_estimates_are_computed_against_the_clock(session: Session) -> None:
    """A running run's run time includes its time in the state; a late run's delta grows."""
    now = datetime.datetime.now(datetime.timezone.utc)
    bare_run(session, name="running", state_type=StateType.RUNNING, state_timestamp=now - datetime.timedelta(seconds=100),
             total_run_time=datetime.timedelta(seconds=20))
    bare_run(session, name="late", state_type=StateType.SCHEDULED, expected_start_time=now - datetime.timedelta(seconds=50))
    bare_run(session, name="done", state_type=StateType.COMPLETED, expected_start_time=now - datetime.timedelta(seconds=50))
    documents = {document["name"]: document for document in read_flow_run_json(session, EVERY_RUN)}
    assert 120 <= documents["running"]["estimated_run_time"] < 130
    assert 50 <= documents["late"]["estimated_start_time_delta"] < 60
    assert documents["done"]["estimated_start_time_delta"] == 0.0
    assert all(isinstance(document["estimated_run_time"], float) for document in documents.values())


def test_a_run_without_a_name_is_given_one(session: Session) -> None:
    run = bare_run(session)
    run.set_state(orm.FlowRunState(type=StateType.RUNNING, name="Running", timestamp=T0, state_details=StateDetails()))
    session.commit()
    session.execute(sa.update(orm.FlowRun).where(orm.FlowRun.id == run.id).values(name=""))
    session.commit()
    document, expected = only_run_json(session)
    assert document["name"] and expected.name
    document["name"] = expected.name
    assert_same_json(document, expected, NOW_DEPENDENT)
