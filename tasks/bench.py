"""`flowruns bench`: throughput and latency figures, each from one run on the configured database.

Every benchmark works in a database of its own, created beside the configured one (same
PostgreSQL server, or a temporary SQLite file) and dropped afterwards: a bench never touches
the rows of a running deployment.
"""

import datetime
import json
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from models import database, migrations
from models.settings import get_settings

LATENCY_CALLS = 20
READ_PAGE = 200
BULK_BATCH = 5_000
STATE_TYPES = ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"]
TAGS = ["etl", "ml", "reporting", "hourly", "daily", "critical", "backfill", "adhoc"]


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    note: str = ""


@dataclass
class Report:
    title: str
    database: str
    figures: list[Figure] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, note: str = "") -> None:
        self.figures.append(Figure(name, value, unit, note))
        progress(f"  {name}: {value:,.2f} {unit} {note}".rstrip())

    def print(self, as_json: bool) -> None:
        if as_json:
            print(json.dumps({"title": self.title, "database": self.database,
                              "figures": [asdict(f) for f in self.figures]}, indent=2))
            return
        width = max(len(f.name) for f in self.figures) if self.figures else 10
        print(f"\n{self.title} — {self.database}")
        print(f"{'figure'.ljust(width)}  {'value':>12}  unit")
        print(f"{'-' * width}  {'-' * 12}  {'-' * 12}")
        for figure in self.figures:
            note = f"  ({figure.note})" if figure.note else ""
            print(f"{figure.name.ljust(width)}  {figure.value:>12,.2f}  {figure.unit}{note}")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def scratch_database() -> Iterator[str]:
    """A migrated database of the bench's own on the configured server, dropped afterwards."""
    url = make_url(get_settings().database_url)
    if url.get_backend_name() == "sqlite":
        with TemporaryDirectory() as directory:
            scratch = f"sqlite:///{Path(directory) / 'bench.db'}"
            migrations.upgrade(scratch)
            yield scratch
            database.get_engine(scratch).dispose()
        return
    name = f"flowruns_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    scratch = url.set(database=name).render_as_string(hide_password=False)
    try:
        migrations.upgrade(scratch)
        yield scratch
    finally:
        database.get_engine(scratch).dispose()
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


# --- bench models -------------------------------------------------------------------------


def run_models_bench(sizes: list[int], runs: int, as_json: bool) -> Report:
    from models import deployments, flows
    from models.schemas.actions import DeploymentCreate, FlowCreate

    report = Report("flowruns bench models (in-process, one transaction per operation)", _describe_url())
    with scratch_database() as url:
        with database.unit_of_work(url) as session:
            flow = flows.create_flow(session, FlowCreate(name="bench"))
            plain = deployments.create_deployment(session, DeploymentCreate(name="plain", flow_id=flow.id))
            limited = deployments.create_deployment(
                session,
                DeploymentCreate(name="limited", flow_id=flow.id, concurrency_limit=10,
                                 concurrency_options={"collision_strategy": "ENQUEUE"}),
            )
            flow_id, plain_id, limited_id = flow.id, plain.id, limited.id

        progress(f"creating {runs} runs ...")
        run_ids = _bench_creates(report, url, flow_id, plain_id, runs)
        progress(f"driving {runs} runs scheduled → pending → running → completed ...")
        _bench_transitions(report, url, run_ids, "core-policy transitions/s (no limit)")
        limited_ids = _create_runs(url, flow_id, limited_id, runs)
        _bench_transitions(report, url, limited_ids, "core-policy transitions/s (limit 10)")
        progress(f"deleting {runs} runs ...")
        _bench_deletes(report, url, run_ids + limited_ids)

        loaded = 0
        for size in sorted(sizes):
            progress(f"loading the table up to {size:,} runs ...")
            _bulk_load(url, flow_id, [plain_id, limited_id], size - loaded)
            loaded = size
            _bench_reads(report, url, size, plain_id)
    report.print(as_json)
    return report


def _describe_url() -> str:
    return make_url(get_settings().database_url).render_as_string(hide_password=True)


def _scheduled_in_past() -> Any:
    from models.schemas.states import Scheduled

    return Scheduled(scheduled_time=datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=5))


def _create_runs(url: str, flow_id: uuid.UUID, deployment_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    from models import flow_runs
    from models.schemas.core import FlowRun

    ids = []
    for _ in range(count):
        with database.unit_of_work(url) as session:
            run = flow_runs.create_flow_run(
                session, FlowRun(flow_id=flow_id, deployment_id=deployment_id, state=_scheduled_in_past())
            )
            ids.append(run.id)
    return ids


def _bench_creates(report: Report, url: str, flow_id: uuid.UUID, deployment_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    ids: list[uuid.UUID] = []
    seconds = timed(lambda: ids.extend(_create_runs(url, flow_id, deployment_id, count)))
    report.add("creates/s (with a Scheduled state)", rate(count, seconds), "runs/s")
    return ids


def _bench_transitions(report: Report, url: str, run_ids: list[uuid.UUID], name: str) -> None:
    from models import flow_runs
    from models.schemas.responses import SetStateStatus
    from models.schemas.states import Completed, Pending, Running
    from orchestration import CoreFlowPolicy

    rejected = 0

    def drive() -> None:
        nonlocal rejected
        for run_id in run_ids:
            for make in (Pending, Running, Completed):
                with database.unit_of_work(url) as session:
                    result = flow_runs.set_flow_run_state(session, run_id, make(), flow_policy=CoreFlowPolicy)
                    if result.status != SetStateStatus.ACCEPT:
                        rejected += 1

    seconds = timed(drive)
    note = f"{rejected} not accepted" if rejected else ""
    report.add(name, rate(3 * len(run_ids), seconds), "transitions/s", note)


def _bench_deletes(report: Report, url: str, run_ids: list[uuid.UUID]) -> None:
    from models import flow_runs

    def delete_all() -> None:
        for run_id in run_ids:
            with database.unit_of_work(url) as session:
                flow_runs.delete_flow_run(session, run_id)

    report.add("deletes/s", rate(len(run_ids), timed(delete_all)), "runs/s")


def _bulk_load(url: str, flow_id: uuid.UUID, deployment_ids: list[uuid.UUID], count: int) -> None:
    """Insert runs with a current state, tags and some task runs, in large batches."""
    from models import orm

    if count <= 0:
        return
    engine = database.get_engine(url)
    now = datetime.datetime.now(datetime.timezone.utc)
    rng = random.Random(count)
    done = 0
    while done < count:
        batch = min(BULK_BATCH, count - done)
        runs, states, task_runs = [], [], []
        for _ in range(batch):
            run_id, state_id = uuid.uuid4(), uuid.uuid4()
            state_type = rng.choice(STATE_TYPES)
            when = now - datetime.timedelta(seconds=rng.randint(0, 86_400 * 30))
            runs.append({
                "id": run_id, "created": when, "updated": when, "name": f"run-{run_id.hex[:8]}",
                "flow_id": flow_id, "deployment_id": rng.choice(deployment_ids + [None]),
                "state_type": state_type, "state_name": state_type.capitalize(), "state_timestamp": when,
                "run_count": 1, "expected_start_time": when, "start_time": when,
                "total_run_time": datetime.timedelta(0), "parameters": {}, "context": {},
                "empirical_policy": {}, "tags": rng.sample(TAGS, 2), "auto_scheduled": False,
            })
            states.append({
                "id": state_id, "created": when, "updated": when, "flow_run_id": run_id, "type": state_type,
                "timestamp": when, "name": state_type.capitalize(), "state_details": {"flow_run_id": str(run_id)},
            })
            if rng.random() < 0.2:
                task_runs.append({
                    "id": uuid.uuid4(), "created": when, "updated": when, "name": "task", "flow_run_id": run_id,
                    "task_key": "t", "dynamic_key": "0", "state_type": state_type, "run_count": 1,
                    "total_run_time": datetime.timedelta(0), "flow_run_run_count": 1, "empirical_policy": {},
                    "task_inputs": {}, "tags": [],
                })
        with engine.begin() as connection:
            connection.execute(sa.insert(orm.FlowRun), runs)
            connection.execute(sa.insert(orm.FlowRunState), states)
            connection.execute(
                sa.update(orm.FlowRun)
                .where(orm.FlowRun.id == sa.bindparam("run_id"))
                .values(state_id=sa.bindparam("state_id"))
                .execution_options(synchronize_session=False),
                [{"run_id": r["id"], "state_id": s["id"]} for r, s in zip(runs, states)],
            )
            if task_runs:
                connection.execute(sa.insert(orm.TaskRun), task_runs)
        done += batch
    with engine.begin() as connection:
        connection.exec_driver_sql("ANALYZE")


def _bench_reads(report: Report, url: str, size: int, deployment_id: uuid.UUID) -> None:
    from models import flow_runs
    from models.schemas import filters
    from models.schemas.responses import FlowRunResponse

    cases = {
        "state-type filter": {"flow_run_filter": filters.FlowRunFilter(
            state=filters.FlowRunFilterState(type=filters.FlowRunFilterStateType(any_=["COMPLETED", "FAILED"])))},
        "tag filter": {"flow_run_filter": filters.FlowRunFilter(tags=filters.FlowRunFilterTags(all_=["etl"]))},
        "deployment filter": {"deployment_filter": filters.DeploymentFilter(
            id=filters.DeploymentFilterId(any_=[deployment_id]))},
        "task-run filter": {"task_run_filter": filters.TaskRunFilter(
            state=filters.TaskRunFilterState(type=filters.TaskRunFilterStateType(any_=["COMPLETED"])))},
    }
    for label, kwargs in cases.items():
        reads, counts = [], []
        for _ in range(LATENCY_CALLS):
            with database.unit_of_work(url) as session:
                started = time.perf_counter()
                rows = flow_runs.read_flow_runs(session, limit=READ_PAGE, **kwargs)
                json.dumps([FlowRunResponse.from_orm_run(row).model_dump(mode="json") for row in rows])
                reads.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                flow_runs.count_flow_runs(session, **kwargs)
                counts.append((time.perf_counter() - started) * 1000)
        report.add(f"read 200 + JSON, {label}, {size:,} runs: median", statistics.median(reads), "ms",
                   f"p95 {percentile(reads, 0.95):.2f} ms")
        report.add(f"count, {label}, {size:,} runs: median", statistics.median(counts), "ms",
                   f"p95 {percentile(counts, 0.95):.2f} ms")


# --- bench limit --------------------------------------------------------------------------


def run_limit_bench(seconds: float, as_json: bool) -> Report:
    """Single-row UPDATE + COMMIT in a loop on one connection: the ceiling for one-transaction work."""
    report = Report("flowruns bench limit (one connection, one row, one commit per update)", _describe_url())
    with scratch_database() as url:
        engine = database.get_engine(url)
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE bench_counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            connection.exec_driver_sql("INSERT INTO bench_counter VALUES (1, 0)")
        commits = 0
        deadline = time.perf_counter() + seconds
        started = time.perf_counter()
        with engine.connect() as connection:
            while time.perf_counter() < deadline:
                with connection.begin():
                    connection.exec_driver_sql("UPDATE bench_counter SET n = n + 1 WHERE id = 1")
                commits += 1
        report.add("single-row commits/s", rate(commits, time.perf_counter() - started), "commits/s")
    report.print(as_json)
    return report
