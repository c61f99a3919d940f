"""read_flow_runs / count_flow_runs: every sort, paging, column subsets, eager loading, and
count == len(read) for every combination of the six filters."""

import datetime
import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from models import orm
from models.flow_run_queries import count_flow_runs, read_flow_runs
from models.schemas import filters
from models.schemas.sorting import DeploymentSort, FlowRunSort, TaskRunSort
from models.schemas.states import StateType
from tests import databases
from tests.test_flow_run_filters import World, build_world, parse_filters

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
NULLS_SORT_HIGH = databases.test_dialect() == "postgresql"
"""PostgreSQL sorts NULLs as larger than any value, SQLite as smaller."""


def at(hours: float) -> datetime.datetime:
    return T0 + datetime.timedelta(hours=hours)


def nulls_placed(values: list[str], nulls: list[str], ascending: bool) -> list[str]:
    """The expected order: `values` (already sorted), then or before the runs whose key is
    NULL, wherever the dialect puts NULLs."""
    nulls_last = NULLS_SORT_HIGH == ascending
    return values + nulls if nulls_last else nulls + values


def names_in_order(session: Session, **arguments: Any) -> list[str]:
    runs = read_flow_runs(session, **arguments)
    return [run.name for run in runs]


# --------------------------------------------------------------------------- sorting


@pytest.fixture
def sortable_runs(session: Session) -> dict[str, orm.FlowRun]:
    """Six runs with ids 1..6 (id order = insertion order) and some equal or missing keys.

    | run | name | start | expected | next scheduled | end |
    |-----|------|-------|----------|----------------|-----|
    | s1  | c    | 2     | 1        | -              | 3   |
    | s2  | a    | -     | 4        | 4              | -   |
    | s3  | b    | 1     | 0        | -              | 2   |
    | s4  | d    | -     | -        | -              | -   |
    | s5  | e    | 5     | 5        | -              | -   |
    | s6  | a    | -     | 4        | 4              | -   |
    """
    flow = orm.Flow(name="sorted")
    session.add(flow)
    session.flush()
    rows: dict[str, dict[str, Any]] = {
        "s1": dict(name="c", start_time=at(2), expected_start_time=at(1), end_time=at(3)),
        "s2": dict(name="a", expected_start_time=at(4), next_scheduled_start_time=at(4)),
        "s3": dict(name="b", start_time=at(1), expected_start_time=at(0), end_time=at(2)),
        "s4": dict(name="d"),
        "s5": dict(name="e", start_time=at(5), expected_start_time=at(5)),
        "s6": dict(name="a", expected_start_time=at(4), next_scheduled_start_time=at(4)),
    }
    runs = {
        key: orm.FlowRun(id=uuid.UUID(int=index), flow_id=flow.id, **fields)
        for index, (key, fields) in enumerate(rows.items(), start=1)
    }
    session.add_all(runs.values())
    session.commit()
    return runs


# Expected orders by run key; ties on the key are broken by id in the key's direction.
EXPECTED_ORDERS = {
    FlowRunSort.ID_DESC: ["s6", "s5", "s4", "s3", "s2", "s1"],
    FlowRunSort.START_TIME_ASC: nulls_placed(["s3", "s1", "s2", "s6", "s5"], ["s4"], True),
    FlowRunSort.START_TIME_DESC: nulls_placed(["s5", "s6", "s2", "s1", "s3"], ["s4"], False),
    FlowRunSort.EXPECTED_START_TIME_ASC: nulls_placed(["s3", "s1", "s2", "s6", "s5"], ["s4"], True),
    FlowRunSort.EXPECTED_START_TIME_DESC: nulls_placed(
        ["s5", "s6", "s2", "s1", "s3"], ["s4"], False
    ),
    FlowRunSort.NAME_ASC: ["s2", "s6", "s3", "s1", "s4", "s5"],
    FlowRunSort.NAME_DESC: ["s5", "s4", "s1", "s3", "s6", "s2"],
    FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC: nulls_placed(
        ["s2", "s6"], ["s1", "s3", "s4", "s5"], True
    ),
    FlowRunSort.END_TIME_DESC: nulls_placed(["s1", "s3"], ["s6", "s5", "s4", "s2"], False),
}


def test_every_sort_value_is_covered() -> None:
    assert set(EXPECTED_ORDERS) == set(FlowRunSort)


def keys_in_order(session: Session, runs: dict[str, orm.FlowRun], **arguments: Any) -> list[str]:
    key_of = {run.id: key for key, run in runs.items()}
    return [key_of[run.id] for run in read_flow_runs(session, **arguments)]


@pytest.mark.parametrize("sort", list(FlowRunSort), ids=lambda sort: sort.value)
def test_sort_orders_runs_exactly(
    session: Session, sortable_runs: dict[str, orm.FlowRun], sort: FlowRunSort
) -> None:
    assert keys_in_order(session, sortable_runs, sort=sort) == EXPECTED_ORDERS[sort]
    assert count_flow_runs(session) == len(EXPECTED_ORDERS[sort])


@pytest.mark.parametrize("sort", list(FlowRunSort), ids=lambda sort: sort.value)
def test_pages_of_two_concatenate_to_the_full_order(
    session: Session, sortable_runs: dict[str, orm.FlowRun], sort: FlowRunSort
) -> None:
    pages = [
        keys_in_order(session, sortable_runs, sort=sort, offset=offset, limit=2)
        for offset in (0, 2, 4, 6)
    ]
    assert [len(page) for page in pages] == [2, 2, 2, 0]
    assert list(itertools.chain(*pages)) == EXPECTED_ORDERS[sort]


def test_default_sort_is_id_desc(session: Session, sortable_runs: dict[str, orm.FlowRun]) -> None:
    assert keys_in_order(session, sortable_runs) == EXPECTED_ORDERS[FlowRunSort.ID_DESC]


def test_offset_and_limit_apply_after_filter_and_sort(
    session: Session, sortable_runs: dict[str, orm.FlowRun]
) -> None:
    started = filters.FlowRunFilter.model_validate({"start_time": {"is_null_": False}})
    arguments: dict[str, Any] = dict(flow_run_filter=started, sort=FlowRunSort.NAME_ASC)
    assert keys_in_order(session, sortable_runs, **arguments) == ["s3", "s1", "s5"]
    assert keys_in_order(session, sortable_runs, **arguments, offset=1) == ["s1", "s5"]
    assert keys_in_order(session, sortable_runs, **arguments, limit=1) == ["s3"]
    assert keys_in_order(session, sortable_runs, **arguments, offset=1, limit=1) == ["s1"]
    assert keys_in_order(session, sortable_runs, **arguments, offset=3) == []
    assert keys_in_order(session, sortable_runs, **arguments, limit=0) == []
    assert count_flow_runs(session, flow_run_filter=started) == 3


def test_sort_values_are_their_names_on_the_wire() -> None:
    assert FlowRunSort("START_TIME_DESC") is FlowRunSort.START_TIME_DESC
    assert [sort.value for sort in FlowRunSort] == [sort.name for sort in FlowRunSort]
    with pytest.raises(ValueError):
        FlowRunSort("START_TIME")


# --------------------------------------------------------------------------- columns, eager loads


@pytest.fixture
def queued_run(session: Session) -> orm.FlowRun:
    flow = orm.Flow(name="queued")
    pool = orm.WorkPool(name="pool", type="process")
    session.add_all([flow, pool])
    session.flush()
    queue = orm.WorkQueue(name="queue", work_pool_id=pool.id)
    session.add(queue)
    session.flush()
    run = orm.FlowRun(
        name="queued-run", flow_id=flow.id, work_queue_id=queue.id, work_queue_name="queue",
        parameters={"x": 1}, tags=["t"],
    )
    session.add(run)
    session.commit()
    session.expunge_all()
    return run


def test_work_queue_and_pool_are_loaded_with_the_runs(
    session: Session, queued_run: orm.FlowRun
) -> None:
    (run,) = read_flow_runs(session)
    session.expunge_all()  # no lazy load possible from here on
    assert run.work_queue is not None
    assert run.work_queue.name == "queue"
    assert run.work_queue.work_pool.name == "pool"


@pytest.mark.parametrize(
    "columns",
    [
        ["id", "name", "work_queue_id"],
        [orm.FlowRun.id, orm.FlowRun.name, orm.FlowRun.work_queue_id],
    ],
    ids=["names", "attributes"],
)
def test_columns_load_only_the_named_columns(
    session: Session, queued_run: orm.FlowRun, columns: list[Any]
) -> None:
    (run,) = read_flow_runs(session, columns=columns)
    unloaded = sa.inspect(run).unloaded
    assert {"parameters", "tags", "flow_id"} <= unloaded
    assert not {"id", "name", "work_queue_id"} & unloaded
    assert run.name == "queued-run"
    assert run.work_queue is not None and run.work_queue.work_pool.name == "pool"


def test_columns_without_the_queue_column_still_load_the_queue(
    session: Session, queued_run: orm.FlowRun
) -> None:
    (run,) = read_flow_runs(session, columns=["name"])
    session.expunge_all()
    assert run.work_queue is not None and run.work_queue.work_pool.name == "pool"


def test_unknown_column_name_is_refused(session: Session) -> None:
    with pytest.raises(ValueError, match="no_such_column"):
        read_flow_runs(session, columns=["name", "no_such_column"])


# --------------------------------------------------------------------------- related filters


RELATED_FILTERS = {
    "flow_filter": filters.FlowFilter,
    "task_run_filter": filters.TaskRunFilter,
    "deployment_filter": filters.DeploymentFilter,
    "work_pool_filter": filters.WorkPoolFilter,
    "work_queue_filter": filters.WorkQueueFilter,
}


@pytest.fixture
def world(session: Session) -> World:
    return build_world(session)


def run_names(session: Session, **filter_models: Any) -> set[str]:
    runs = read_flow_runs(session, **filter_models)
    assert count_flow_runs(session, **filter_models) == len(runs)
    assert len({run.id for run in runs}) == len(runs)
    return {run.name for run in runs}


@pytest.mark.parametrize(
    ("argument", "runs_having_one"),
    [
        ("flow_filter", 7),
        ("task_run_filter", 3),
        ("deployment_filter", 3),
        ("work_pool_filter", 3),
        ("work_queue_filter", 3),
    ],
)
def test_an_empty_related_filter_means_has_one_an_absent_one_means_all(
    session: Session, world: World, argument: str, runs_having_one: int
) -> None:
    assert len(run_names(session)) == 7
    assert len(run_names(session, **{argument: RELATED_FILTERS[argument]()})) == runs_having_one


# Each filter family: absent, empty, and a few bodies that select different subsets.
FAMILY_OPTIONS: dict[str, list[dict[str, Any] | None]] = {
    "flow_filter": [None, {}, {"name": {"any_": ["etl-daily"]}},
                    {"deployment": {"is_null_": True}}],
    "flow_run_filter": [None, {}, {"tags": {"any_": ["prod", "dev"]}},
                        {"state": {"type": {"not_any_": ["RUNNING"]}}}],
    "task_run_filter": [None, {}, {"tags": {"all_": ["io"]}},
                        {"subflow_runs": {"exists_": False}}],
    "deployment_filter": [None, {}, {"flow_or_deployment_name": {"like_": "report"}},
                          {"paused": {"eq_": False}}],
    "work_pool_filter": [None, {}, {"type": {"any_": ["process"]}}],
    "work_queue_filter": [None, {}, {"name": {"startswith_": ["high", "crit"]}}],
}


def combinations_to_check() -> Iterator[dict[str, int]]:
    """Every pair of families with every pair of their options, then all six families at once
    with the first specific option of each, or absent (an option is an index into FAMILY_OPTIONS).
    Each family's join or EXISTS is independent of the others, so interplay shows up in pairs."""
    for first, second in itertools.combinations(FAMILY_OPTIONS, 2):
        for a, b in itertools.product(
            range(len(FAMILY_OPTIONS[first])), range(len(FAMILY_OPTIONS[second]))
        ):
            yield {first: a, second: b}
    for present in itertools.product((0, 2), repeat=len(FAMILY_OPTIONS)):
        yield dict(zip(FAMILY_OPTIONS, present))


def chosen_bodies(choice: dict[str, int]) -> dict[str, dict[str, Any]]:
    """The filter bodies a combination chooses, the absent ones left out."""
    return {
        family: body
        for family, index in choice.items()
        if (body := FAMILY_OPTIONS[family][index]) is not None
    }


def test_count_equals_read_for_combinations_and_families_intersect(
    session: Session, world: World
) -> None:
    """For each combination, count == len(read), and the runs read are exactly those each
    family selects on its own (families combine with AND)."""
    alone: dict[tuple[str, int], set[str]] = {}
    for family, options in FAMILY_OPTIONS.items():
        for index, body in enumerate(options):
            bodies = {} if body is None else {family: body}
            alone[family, index] = run_names(session, **parse_filters(bodies))

    checked = 0
    for choice in combinations_to_check():
        bodies = chosen_bodies(choice)
        expected = set.intersection(*(alone[item] for item in choice.items()))
        assert run_names(session, **parse_filters(bodies)) == expected, bodies
        checked += 1
    assert checked > 250


def test_count_with_task_run_filter_counts_each_run_once(session: Session, world: World) -> None:
    """alpha-run has two task runs tagged `io`: one run, not two."""
    for bodies in (
        {"task_run_filter": {"tags": {"all_": ["io"]}}},
        {"task_run_filter": {"tags": {"all_": ["io"]}}, "flow_filter": {}},
        {"task_run_filter": {"tags": {"all_": ["io"]}}, "deployment_filter": {},
         "work_pool_filter": {}, "work_queue_filter": {}},
    ):
        models = parse_filters(bodies)
        assert count_flow_runs(session, **models) == len(read_flow_runs(session, **models))
    assert count_flow_runs(session, **parse_filters({"task_run_filter": {}})) == 3


def test_deployment_flow_name_is_the_deployments_flow_not_the_runs(
    session: Session, world: World
) -> None:
    """A run of flow `etl-daily` created from deployment `adhoc` (of flow `reporting`): the
    deployment's flow name matches `report` even when the run's own flow is joined for count."""
    mismatched = orm.FlowRun(
        name="mismatched", flow_id=world.flows["etl-daily"].id,
        deployment_id=world.deployments["adhoc"].id,
    )
    session.add(mismatched)
    session.commit()
    bodies = {
        "flow_filter": {"name": {"any_": ["etl-daily"]}},
        "deployment_filter": {"flow_or_deployment_name": {"like_": "report"}},
    }
    assert run_names(session, **parse_filters(bodies)) == {"mismatched"}


def test_flow_without_deployment_filter_is_unaffected_by_the_joined_deployment(
    session: Session, world: World
) -> None:
    bodies = {"flow_filter": {"deployment": {"is_null_": False}}, "deployment_filter": {}}
    assert run_names(session, **parse_filters(bodies)) == {"alpha-run", "beta-run", "gamma-Run"}


# --------------------------------------------------------------------------- other sorts


def test_task_run_sorts(session: Session) -> None:
    flow = orm.Flow(name="tasks")
    session.add(flow)
    session.flush()
    now = datetime.datetime.now(datetime.timezone.utc)
    seconds = datetime.timedelta(seconds=1)
    rows: dict[str, dict[str, Any]] = {
        "quick": dict(total_run_time=5 * seconds, expected_start_time=at(1), end_time=at(2)),
        "slow": dict(total_run_time=10 * seconds, expected_start_time=at(2), end_time=at(1)),
        "running": dict(
            total_run_time=1 * seconds, state_type=StateType.RUNNING,
            state_timestamp=now - 100 * seconds, expected_start_time=at(3),
            next_scheduled_start_time=at(3),
        ),
    }
    session.add_all(
        orm.TaskRun(id=uuid.UUID(int=index), name=name, task_key=name, dynamic_key="0", **fields)
        for index, (name, fields) in enumerate(rows.items(), start=1)
    )
    session.commit()

    def ordered(sort: TaskRunSort) -> list[str]:
        query = sa.select(orm.TaskRun.name).order_by(*sort.as_sql_sort())
        return list(session.scalars(query))

    assert ordered(TaskRunSort.DURATION_DESC) == ["running", "slow", "quick"]
    assert ordered(TaskRunSort.DURATION_ASC) == ["quick", "slow", "running"]
    assert ordered(TaskRunSort.ID_DESC) == ["running", "slow", "quick"]
    assert ordered(TaskRunSort.NAME_ASC) == ["quick", "running", "slow"]
    assert ordered(TaskRunSort.NAME_DESC) == ["slow", "running", "quick"]
    assert ordered(TaskRunSort.EXPECTED_START_TIME_ASC) == ["quick", "slow", "running"]
    assert ordered(TaskRunSort.EXPECTED_START_TIME_DESC) == ["running", "slow", "quick"]
    assert ordered(TaskRunSort.NEXT_SCHEDULED_START_TIME_ASC) == nulls_placed(
        ["running"], ["quick", "slow"], True
    )
    assert ordered(TaskRunSort.END_TIME_DESC) == nulls_placed(
        ["quick", "slow"], ["running"], False
    )


def test_deployment_sorts(session: Session) -> None:
    flow = orm.Flow(name="deployed")
    session.add(flow)
    session.flush()
    session.add_all(
        orm.Deployment(name=name, flow_id=flow.id, created=at(created), updated=at(updated))
        for name, created, updated in (("b", 1, 3), ("a", 2, 2), ("c", 3, 1))
    )
    session.commit()

    def ordered(sort: DeploymentSort) -> list[str]:
        query = sa.select(orm.Deployment.name).order_by(*sort.as_sql_sort())
        return list(session.scalars(query))

    assert ordered(DeploymentSort.CREATED_DESC) == ["c", "a", "b"]
    assert ordered(DeploymentSort.UPDATED_DESC) == ["b", "a", "c"]
    assert ordered(DeploymentSort.NAME_ASC) == ["a", "b", "c"]
    assert ordered(DeploymentSort.NAME_DESC) == ["c", "b", "a"]
