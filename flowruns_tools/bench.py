"""`flowruns bench`: throughput and latency figures, each from one run on the configured database.

Every benchmark works in a database of its own, created beside the configured one (same
PostgreSQL server, or a temporary SQLite file) and dropped afterwards: a bench never touches
the rows of a running deployment.
"""

import concurrent.futures
import datetime
import gc
import json
import os
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

from flowruns_tools import cpu_usage
from models import database, migrations
from models.settings import get_settings

LATENCY_CALLS = 20
COMMIT_RATE_SECONDS = 3.0
"""How long the single-row commit rate is measured before the benches that relate to it."""
CONCURRENT_THREADS = 4
"""Threads of one process for the concurrent figures: what a server handling requests side by side
gets from the model layer (each thread its own connection; Python's work still one core at a time)."""
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
    of_commit_rate: float | None = None
    """A rate as a fraction of the single-row commit rate measured in the same run."""


@dataclass
class Report:
    title: str
    database: str
    figures: list[Figure] = field(default_factory=list)
    commits_per_second: float | None = None
    """Once measured, every rate added is also given as a fraction of this single-row commit rate."""

    def add(self, name: str, value: float, unit: str, note: str = "") -> None:
        ratio = None
        if self.commits_per_second and unit.endswith("/s") and unit != "commits/s":
            ratio = value / self.commits_per_second
            fraction = f"{ratio:.2f}× the single-row commit rate"
            note = f"{note}; {fraction}" if note else fraction
        self.figures.append(Figure(name, value, unit, note, ratio))
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
        progress("measuring the single-row commit rate (as bench limit) ...")
        commits = _single_row_commit_rate(url, COMMIT_RATE_SECONDS)
        report.add("single-row commits/s (as bench limit)", commits, "commits/s")
        report.commits_per_second = commits
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
        progress(f"creating {runs} runs as the worker does (two statements, the inbox row in the write) ...")
        run_ids += _bench_creates(report, url, flow_id, plain_id, runs, as_worker=True,
                                  name="creates/s as the worker makes them")
        progress(f"driving {runs} runs scheduled → pending → running → completed ...")
        _bench_transitions(report, url, run_ids, "core-policy transitions/s (no limit)")
        limited_ids = _create_runs(url, flow_id, limited_id, runs)
        _bench_transitions(report, url, limited_ids, "core-policy transitions/s (limit 10)")
        progress(f"driving {runs} more runs as the worker does (with the inbox, each statement its own commit) ...")
        worker_ids = _create_runs(url, flow_id, plain_id, runs)
        _bench_transitions(report, url, worker_ids, "core-policy transitions/s as the worker makes them (no limit)",
                           as_worker=True)
        worker_limited_ids = _create_runs(url, flow_id, limited_id, runs)
        _bench_transitions(report, url, worker_limited_ids,
                           "core-policy transitions/s as the worker makes them (limit 10)", as_worker=True)
        run_ids += worker_ids + worker_limited_ids
        progress(f"creating and driving {runs} more runs from {CONCURRENT_THREADS} threads ...")
        threaded_ids = _bench_creates(
            report, url, flow_id, plain_id, runs, threads=CONCURRENT_THREADS,
            name=f"creates/s, {CONCURRENT_THREADS} threads in one process",
        )
        _bench_transitions(
            report, url, threaded_ids, f"core-policy transitions/s, {CONCURRENT_THREADS} threads in one process",
            threads=CONCURRENT_THREADS,
        )
        threaded_ids += _bench_creates(
            report, url, flow_id, plain_id, runs, threads=CONCURRENT_THREADS, as_worker=True,
            name=f"creates/s as the worker makes them, {CONCURRENT_THREADS} threads in one process",
        )
        threaded_worker_ids = _create_runs(url, flow_id, plain_id, runs)
        _bench_transitions(
            report, url, threaded_worker_ids,
            f"core-policy transitions/s as the worker makes them, {CONCURRENT_THREADS} threads in one process",
            threads=CONCURRENT_THREADS, as_worker=True,
        )
        threaded_ids += threaded_worker_ids
        progress(f"deleting {runs} runs ...")
        _bench_deletes(report, url, run_ids + limited_ids + threaded_ids)

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


def _create_runs_as_the_worker(url: str, flow_id: uuid.UUID, deployment_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    from models.schemas.actions import FlowRunCreate
    from orchestration import service

    ids = []
    for _ in range(count):
        with database.statement_unit(url) as session:
            inbox = service.Inbox(str(uuid.uuid4()), "flow_runs.create_flow_run", _encode)
            flow_run = FlowRunCreate.model_validate(
                {"flow_id": flow_id, "deployment_id": deployment_id, "state": _scheduled_in_past().model_dump(exclude={"id", "timestamp"})})
            ids.append(uuid.UUID(service.create_flow_run(session, flow_run, inbox).encoded["id"]))
    return ids


def _encode(result: Any) -> Any:
    return result.model_dump(mode="json")


def _bench_creates(
    report: Report, url: str, flow_id: uuid.UUID, deployment_id: uuid.UUID, count: int,
    threads: int = 1, name: str = "creates/s (with a Scheduled state)", as_worker: bool = False,
) -> list[uuid.UUID]:
    """Runs created with a Scheduled state: each in a transaction of its own (`models.flow_runs`),
    or `as_worker`: as the worker creates them (`orchestration.service.create_flow_run`)."""
    ids: list[uuid.UUID] = []
    create_share = _create_runs_as_the_worker if as_worker else _create_runs

    def create(share: list[int]) -> None:
        ids.extend(create_share(url, flow_id, deployment_id, len(share)))

    seconds = timed(lambda: _in_threads(create, list(range(count)), threads))
    report.add(name, rate(count, seconds), "runs/s")
    return ids


def _in_threads(work: Callable[[list[Any]], None], items: list[Any], threads: int) -> None:
    """`work` on `threads` interleaved shares of `items`, each share on its own thread (and so its
    own pooled connection); returns when all are done, re-raising the first error."""
    if threads == 1:
        work(items)
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(work, items[index::threads]) for index in range(threads)]:
            future.result()


def _bench_transitions(
    report: Report, url: str, run_ids: list[uuid.UUID], name: str, threads: int = 1, as_worker: bool = False
) -> None:
    """Each run PENDING → RUNNING → COMPLETED under the core policy, one transition after another
    (per thread). In a transaction of its own, through `models.flow_runs`; or `as_worker`: as the
    worker makes it, each statement its own commit, the request's inbox row in the write."""
    from models import flow_runs
    from models.schemas.responses import SetStateStatus
    from models.schemas.states import Completed, Pending, Running
    from orchestration import CoreFlowPolicy, service

    rejected: list[uuid.UUID] = []
    inbox_name = "flow_runs.set_flow_run_state"

    def drive(share: list[uuid.UUID]) -> None:
        for run_id in share:
            for make in (Pending, Running, Completed):
                if as_worker:
                    with database.statement_unit(url) as session:
                        inbox = service.Inbox(str(uuid.uuid4()), inbox_name, _encode)
                        result = service.set_flow_run_state(
                            session, run_id, make(), flow_policy=CoreFlowPolicy, inbox=inbox).result
                else:
                    with database.unit_of_work(url) as session:
                        result = flow_runs.set_flow_run_state(session, run_id, make(), flow_policy=CoreFlowPolicy)
                if result is None or result.status != SetStateStatus.ACCEPT:
                    rejected.append(run_id)

    conflicts_before = service.conflicts.count
    seconds = timed(lambda: _in_threads(drive, run_ids, threads))
    notes = [f"{len(rejected)} not accepted"] if rejected else []
    notes.append(f"{service.conflicts.count - conflicts_before} conflicts decided again")
    report.add(name, rate(3 * len(run_ids), seconds), "transitions/s", "; ".join(notes))


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
    # What autovacuum leaves after a bulk load (this bench may run on a server without it):
    # planner statistics, and the visibility map that lets a count be answered from an index.
    progress("vacuum analyze ...")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE")


def _bench_reads(report: Report, url: str, size: int, deployment_id: uuid.UUID) -> None:
    from models import flow_runs
    from models.flow_run_queries import read_flow_run_json
    from models.schemas import filters
    from models.schemas.filters import FlowRunFilters
    from tasks.json_serializer import dumps

    cases = {
        "state-type filter": {"flow_run_filter": filters.FlowRunFilter(
            state=filters.FlowRunFilterState(type=filters.FlowRunFilterStateType(any_=["COMPLETED", "FAILED"])))},
        "tag filter": {"flow_run_filter": filters.FlowRunFilter(tags=filters.FlowRunFilterTags(all_=["etl"]))},
        "deployment filter": {"deployment_filter": filters.DeploymentFilter(
            id=filters.DeploymentFilterId(any_=[deployment_id]))},
        "task-run filter": {"task_run_filter": filters.TaskRunFilter(
            state=filters.TaskRunFilterState(type=filters.TaskRunFilterStateType(any_=["COMPLETED"])))},
    }
    gc.collect()
    gc.freeze()  # as a worker does once started (tasks/worker_app.py): full collections skip start-up objects
    for label, kwargs in cases.items():
        reads, counts = [], []
        for _ in range(LATENCY_CALLS):
            with database.unit_of_work(url) as session:
                started = time.perf_counter()
                # What the `flow_runs.read_flow_runs` task does, then the JSON text of its result.
                runs = read_flow_run_json(session, FlowRunFilters(**kwargs), limit=READ_PAGE)
                dumps(runs)
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
        commits = _single_row_commit_rate(url, seconds)
        report.add("single-row commits/s", commits, "commits/s")
    report.print(as_json)
    return report


# === bench worker =========================================================================
# End to end through the broker. A separate section (the benches above measure in-process):
# it reuses the chaos harness's worker process and foreign producer (`flowruns_tools.chaos`).

WORKER_BENCH_SERIAL_RUNS = 100
"""Runs driven one request at a time first: the round trip of a lone request."""


def run_worker_bench(concurrencies: list[int], runs: int, in_flight: int, redis_db: int, as_json: bool) -> int:
    """Transitions/s sustained and latency percentiles with `concurrencies` worker processes, each figure
    also as a fraction of this server's single-row commit rate (measured as `bench limit` does)."""
    from flowruns_tools import chaos

    settings = get_settings()
    try:
        chaos.postgres_url(settings.database_url)
    except chaos.ChaosSetupError as error:
        progress(str(error))
        return 2
    report = Report("flowruns bench worker (foreign producer → Redis → worker → PostgreSQL → result back)",
                    f"{_describe_url()}, Redis {chaos.safe_url(chaos.redis_url_with_db(settings.broker_url, redis_db))}")
    with scratch_database() as url:
        commits = _single_row_commit_rate(url, COMMIT_RATE_SECONDS)
    report.add("single-row commits/s (as bench limit)", commits, "commits/s")
    report.commits_per_second = commits
    options = chaos.Options(database_url=settings.database_url, redis_url=settings.broker_url, redis_db=redis_db)
    for concurrency in concurrencies:
        progress(f"{concurrency} worker process(es): {runs} runs, {in_flight} requests in flight ...")
        try:
            _bench_worker_once(report, options, concurrency, runs, in_flight, commits)
        except chaos.ChaosSetupError as error:
            progress(f"bench worker: {error}")
            return 2
    report.print(as_json)
    return 0


def _single_row_commit_rate(url: str, seconds: float) -> float:
    engine = database.get_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE bench_counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
        connection.exec_driver_sql("INSERT INTO bench_counter VALUES (1, 0)")
    commits = 0
    started = time.perf_counter()
    with engine.connect() as connection:
        while time.perf_counter() - started < seconds:
            with connection.begin():
                connection.exec_driver_sql("UPDATE bench_counter SET n = n + 1 WHERE id = 1")
            commits += 1
    return rate(commits, time.perf_counter() - started)


def _bench_worker_once(report: Report, options: Any, concurrency: int, runs: int, in_flight: int,
                       commits_per_second: float) -> None:
    from flowruns_tools import chaos

    label = f"{concurrency} process{'es' if concurrency > 1 else ''}"
    settings = {"visibility_timeout": 1800, "task_retry_backoff_max_seconds": 60}
    with chaos.world(options, f"bench-{concurrency}", loglevel="WARNING", concurrency=concurrency,
                     worker_settings=settings, resend_after=3600.0, worker_app=CEILING_APP) as scenario:
        scenario.start_worker()
        flow_id, (deployment_id,) = scenario.make_deployments(1, None)
        driver = scenario.driver

        created: list[str] = []
        started = time.perf_counter()
        for index in range(runs + WORKER_BENCH_SERIAL_RUNS):
            flow_run = {"flow_id": flow_id, "deployment_id": deployment_id, "name": f"bench-{index}",
                        "state": {"type": "SCHEDULED"}}
            driver.submit("flow_runs.create_flow_run", {"flow_run": flow_run},
                          on_done=lambda request: created.append(request.result["id"]))
        total = runs + WORKER_BENCH_SERIAL_RUNS
        if not driver.run_until(lambda: len(created) == total, time.monotonic() + 600):
            raise chaos.ChaosSetupError("the runs were not created within 600 s")
        report.add(f"{label}: creates/s, {total} in flight", rate(total, time.perf_counter() - started), "runs/s")

        serial = _drive_serially(driver, created[:WORKER_BENCH_SERIAL_RUNS])
        for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            value = percentile(serial, fraction) * 1000
            report.add(f"{label}: round trip {name}, 1 in flight", value, "ms",
                       f"{value / 1000 * commits_per_second:.1f}× a single-row commit")

        concurrent_runs = created[WORKER_BENCH_SERIAL_RUNS:]
        processes = {
            "worker main process": [scenario.worker.pid],
            "worker pool processes": scenario.worker.children(),
            "this producer": [os.getpid()],
        }
        pids = [pid for group in processes.values() for pid in group]
        worker_pids = [scenario.worker.pid, *scenario.worker.children()]
        memory = _MemoryWatch(worker_pids)
        before = cpu_usage.snapshot(pids) if cpu_usage.available() else None
        started = time.perf_counter()
        transitions, seconds, latencies = _drive_concurrently(driver, concurrent_runs, in_flight,
                                                              on_progress=memory.sample)
        if before is not None:
            _report_cpu(report, label, before, cpu_usage.snapshot(pids), processes, 3 * len(concurrent_runs),
                        time.perf_counter() - started)
        throughput = rate(transitions, seconds)
        report.add(f"{label}: transitions/s sustained, {in_flight} in flight", throughput, "transitions/s")
        memory.report(report, label)

        progress(f"  the ceiling: {3 * len(concurrent_runs)} requests of {NO_DATABASE}, the same way ...")
        before = cpu_usage.snapshot(pids) if cpu_usage.available() else None
        started = time.perf_counter()
        ceiling_transitions, ceiling_seconds, _ = _drive_concurrently(driver, concurrent_runs, in_flight,
                                                                      task_name=NO_DATABASE)
        if before is not None:
            _report_cpu(report, f"{label}: ceiling", before, cpu_usage.snapshot(pids), processes,
                        ceiling_transitions, time.perf_counter() - started, per="request")
        ceiling = rate(ceiling_transitions, ceiling_seconds)
        report.add(f"{label}: no-database ceiling, {in_flight} in flight", ceiling, "requests/s",
                   "the same worker, settings and messages; the task does no database work")
        report.add(f"{label}: transitions/s as a fraction of that ceiling", throughput / ceiling, "×")
        for name, fraction in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99)):
            value = percentile(latencies, fraction) * 1000
            report.add(f"{label}: latency {name}, {in_flight} in flight", value, "ms",
                       f"{value / 1000 * commits_per_second:.0f}× a single-row commit")
        if driver.resends or driver.transient_failures:
            progress(f"  note: {driver.resends} re-sends, {driver.transient_failures} transient failures")


def _report_cpu(report: Report, label: str, before: Any, after: Any, processes: dict[str, list[int]],
                count: int, elapsed: float, per: str = "transition") -> None:
    """CPU per transition (or per `per`), machine-wide and by group of processes: when the cores
    are busy, this is the bound."""
    per_item = 1000 / count
    machine = (after.machine_busy - before.machine_busy) * per_item
    shares = {name: cpu_usage.process_seconds(before, after, pids) for name, pids in processes.items()}
    busy = (after.machine_busy - before.machine_busy) / (elapsed * cpu_usage.cores())
    ceiling = cpu_usage.cores() * 1000 / machine if machine > 0 else float("inf")
    report.add(f"{label}: machine CPU per {per}", machine, "ms",
               f"cores {busy:.0%} busy; {cpu_usage.cores()} cores allow ≈{ceiling:,.0f} {per}s/s at this cost")
    for name, seconds in shares.items():
        report.add(f"{label}: … of which {name}", seconds * per_item, "ms")
    rest = machine - sum(shares.values()) * per_item
    report.add(f"{label}: … of which PostgreSQL, Redis and the rest", max(0.0, rest), "ms")


LIFE = ("PENDING", "RUNNING", "COMPLETED")

CEILING_APP = "flowruns_tools.ceiling_app"
NO_DATABASE = "bench.no_database"
MEMORY_FIRST_SAMPLE = 5_000
"""Worker memory is read after this many transitions, and again at the end."""


class _MemoryWatch:
    """Resident size of the worker's processes after the first transitions and at the end: a
    worker that keeps growing under a steady load leaks."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.first: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.done = 0

    def sample(self, done: int) -> None:
        self.done = done
        if done == MEMORY_FIRST_SAMPLE:
            self.first = {pid: cpu_usage.resident_kib(pid) for pid in self.pids}

    def report(self, report: Report, label: str) -> None:
        self.last = {pid: cpu_usage.resident_kib(pid) for pid in self.pids}
        if not self.first:
            progress(f"  memory: fewer than {MEMORY_FIRST_SAMPLE} transitions, no growth figure")
            return
        growth = max((self.last[pid] - self.first[pid]) / self.first[pid] for pid in self.pids if self.first[pid])
        sizes = ", ".join(f"{self.first[pid] // 1024}→{self.last[pid] // 1024} MiB" for pid in self.pids)
        report.add(f"{label}: worker memory growth, transitions {MEMORY_FIRST_SAMPLE:,}→{self.done:,}", growth * 100,
                   "%", f"resident size per process (main, pool): {sizes}")


def _drive_serially(driver: Any, run_ids: list[str]) -> list[float]:
    """One request outstanding at a time; the round trip of each."""
    latencies = []
    for run_id in run_ids:
        for state_type in LIFE:
            request = driver.submit("flow_runs.set_flow_run_state",
                                    {"flow_run_id": run_id, "state": {"type": state_type}})
            driver.run_until(lambda: request.meta is not None, time.monotonic() + 60)
            if not request.succeeded or request.result["status"] != "ACCEPT":
                raise RuntimeError(f"bench transition not accepted: {request.result}")
            latencies.append(request.latency)
    return latencies


def _drive_concurrently(
    driver: Any, run_ids: list[str], in_flight: int, task_name: str = "flow_runs.set_flow_run_state",
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, float, list[float]]:
    """Each run's next transition is sent when its last result arrives; a finished run makes room for
    the next. The rate counts the steady part: from the first result until the last run was started."""
    pending_runs = list(reversed(run_ids))
    latencies: list[float] = []
    done = [0]
    steady: dict[str, float] = {}

    def propose(run_id: str, step: int) -> None:
        driver.submit(task_name, {"flow_run_id": run_id, "state": {"type": LIFE[step]}},
                      on_done=lambda request: finished(request, run_id, step))

    def finished(request: Any, run_id: str, step: int) -> None:
        if not request.succeeded or request.result["status"] != "ACCEPT":
            raise RuntimeError(f"bench transition not accepted: {request.result}")
        latencies.append(request.latency)
        done[0] += 1
        if on_progress is not None:
            on_progress(done[0])
        steady.setdefault("first", time.perf_counter())
        steady.setdefault("first_done", done[0])
        if step + 1 < len(LIFE):
            propose(run_id, step + 1)
        elif pending_runs:
            propose(pending_runs.pop(), 0)
            if not pending_runs:
                steady["last"] = time.perf_counter()
                steady["last_done"] = done[0]

    started = time.perf_counter()
    for _ in range(min(in_flight, len(pending_runs))):
        propose(pending_runs.pop(), 0)
    total = 3 * len(run_ids)
    if not driver.run_until(lambda: done[0] == total, time.monotonic() + 1800):
        raise RuntimeError("bench transitions did not finish within 1800 s")
    if "last" in steady and steady["last"] - steady["first"] > 1.0:
        return int(steady["last_done"] - steady["first_done"]), steady["last"] - steady["first"], latencies
    return total, time.perf_counter() - started, latencies
