"""The soak's series: the database's table and index sizes and the processes' resident memory sampled
at every interval boundary, beat's maintenance outcomes as they happen; then one row per interval
(and one for the drain after the deadline) as a table, as JSON and as a PNG of four panels."""

import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from flowruns_tools.chaos.soak_load import KINDS, RequestLog
from flowruns_tools.cpu_usage import resident_kib

TABLES = ("flow_run", "flow_run_state", "processed_request", "concurrency_slot_holding")
PRUNE_TASK = "maintenance.prune_processed_requests"
RECONCILE_TASK = "maintenance.reconcile_concurrency_slots"
POLL_SECONDS = 1.0
"""beat's outcomes are read this often: well below the shortest prune interval, so none is missed."""
SIZES = " UNION ALL ".join(
    f"SELECT '{table}', pg_table_size('{table}'), pg_indexes_size('{table}'), (SELECT count(*) FROM {table})"
    for table in TABLES
)
MAINTENANCE = "SELECT task_name, last_run, outcome FROM maintenance_run"
MB = 1024 * 1024
DRAIN_LABEL = "drain"
PLOT_SIZE_INCHES = (14.0, 9.0)


@dataclass(frozen=True)
class TableSize:
    rows: int
    table_bytes: int
    index_bytes: int


@dataclass(frozen=True)
class Sample:
    """The database and the processes at one moment, `at` seconds into the soak."""

    at: float
    tables: dict[str, TableSize]
    worker_rss_kb: int
    """Main process plus pool processes."""
    worker_largest_kb: int
    """The largest single worker process."""
    beat_rss_kb: int


@dataclass(frozen=True)
class MaintenanceRun:
    at: float
    task: str
    outcome: Any


class Sampler(threading.Thread):
    """Samples the database and the processes at each boundary (seconds after `started`), and reads
    beat's maintenance outcomes every second in between."""

    def __init__(self, database_url: str, started: float, boundaries: Sequence[float],
                 worker_pids: Callable[[], list[int]], beat_pids: Callable[[], list[int]]) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.engine = sa.create_engine(database_url, poolclass=NullPool, connect_args={"connect_timeout": 5})
        self.started = started
        self.boundaries = list(boundaries)
        self.worker_pids = worker_pids
        self.beat_pids = beat_pids
        self.samples: list[Sample] = []
        self.maintenance: list[MaintenanceRun] = []
        self.errors: list[str] = []
        self._last_runs: dict[str, Any] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        self._poll_maintenance()
        due = [0.0, *self.boundaries]  # the first: where the series starts from
        while due and not self._halt.is_set():
            wait = min(POLL_SECONDS, max(0.0, self.started + due[0] - time.monotonic()))
            if wait and self._halt.wait(wait):
                break
            self._poll_maintenance()
            if time.monotonic() >= self.started + due[0] and self._sample():
                due.pop(0)
        while not self._halt.wait(POLL_SECONDS):  # the drain: outcomes still count, the last sample waits
            self._poll_maintenance()

    def finish(self) -> None:
        """Stop, then take the last reading and sample (the end of the drain)."""
        self._halt.set()
        self.join(timeout=60)
        self._poll_maintenance()
        self._sample()
        self.engine.dispose()

    def _now(self) -> float:
        return time.monotonic() - self.started

    def _sample(self) -> bool:
        at = self._now()
        try:
            with self.engine.connect() as connection:
                tables = {name: TableSize(int(rows), int(size), int(index))
                          for name, size, index, rows in connection.exec_driver_sql(SIZES)}
        except sa.exc.DBAPIError as error:
            self.errors.append(f"sample at {at:.0f}s: {error}")
            return False
        workers = [resident_kib(pid) for pid in self.worker_pids()]
        self.samples.append(Sample(at, tables, sum(workers), max(workers, default=0),
                                   sum(resident_kib(pid) for pid in self.beat_pids())))
        return True

    def _poll_maintenance(self) -> None:
        try:
            with self.engine.connect() as connection:
                runs = list(connection.exec_driver_sql(MAINTENANCE))
        except sa.exc.DBAPIError as error:
            self.errors.append(f"maintenance outcomes at {self._now():.0f}s: {error}")
            return
        for task, last_run, outcome in runs:
            if self._last_runs.get(task) != last_run:
                self._last_runs[task] = last_run
                self.maintenance.append(MaintenanceRun(self._now(), task, outcome))



@dataclass(frozen=True)
class IntervalRow:
    """What happened in (start, end] seconds into the soak, and the database and processes at its end."""

    label: str
    start: float
    end: float
    completed: dict[str, int]
    latency_ms: dict[str, tuple[float | None, float | None]]
    """(p50, p99) by kind, and over all kinds under `all`."""
    sample: Sample
    pruned: int

    @property
    def seconds(self) -> float:
        return max(self.end - self.start, 1e-9)

    def rate(self, kind: str | None = None) -> float:
        """Requests per second of `kind` (None: all kinds)."""
        return (sum(self.completed.values()) if kind is None else self.completed.get(kind, 0)) / self.seconds

    def table_mb(self, table: str) -> float:
        return self.sample.tables[table].table_bytes / MB

    def rows_of(self, table: str) -> int:
        return self.sample.tables[table].rows

    @property
    def index_mb(self) -> float:
        return sum(size.index_bytes for size in self.sample.tables.values()) / MB

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label, "start_seconds": round(self.start, 1), "end_seconds": round(self.end, 1),
            "completed": self.completed, "per_second": {kind: round(self.rate(kind), 2) for kind in KINDS.values()},
            "per_second_total": round(self.rate(), 2),
            "latency_ms": {kind: {"p50": p50, "p99": p99} for kind, (p50, p99) in self.latency_ms.items()},
            "worker_rss_mb": round(self.sample.worker_rss_kb / 1024, 1),
            "worker_largest_process_mb": round(self.sample.worker_largest_kb / 1024, 1),
            "beat_rss_mb": round(self.sample.beat_rss_kb / 1024, 1),
            "tables": {name: {"rows": size.rows, "table_mb": round(size.table_bytes / MB, 2),
                              "index_mb": round(size.index_bytes / MB, 2)}
                       for name, size in self.sample.tables.items()},
            "index_mb": round(self.index_mb, 2),
            "pruned": self.pruned,
        }


def percentile(values: Sequence[float], share: float) -> float | None:
    """Nearest-rank percentile (`share` in 0..1), None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def interval_row(label: str, start: float, end: float, log: RequestLog, sample: Sample,
                 maintenance: Sequence[MaintenanceRun]) -> IntervalRow:
    finished = log.between(start, end)
    latencies: dict[str, list[float]] = {"all": [entry.latency for entry in finished]}
    for entry in finished:
        latencies.setdefault(entry.kind, []).append(entry.latency)
    summary = {kind: (_ms(percentile(values, 0.5)), _ms(percentile(values, 0.99)))
               for kind, values in latencies.items()}
    counts = Counter(entry.kind for entry in finished)
    pruned = sum(int(run.outcome or 0) for run in maintenance if run.task == PRUNE_TASK and start < run.at <= end)
    return IntervalRow(label, start, end, {kind: counts.get(kind, 0) for kind in KINDS.values()}, summary, sample,
                       pruned)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def build_rows(log: RequestLog, samples: Sequence[Sample], maintenance: Sequence[MaintenanceRun],
               boundaries: Sequence[float], *, first: int = 0, drain: bool = True) -> list[IntervalRow]:
    """One row per interval from the `first` on, as far as samples reach, up to the deadline (the last
    boundary); then, with `drain`, one for the drain after it. Each row takes the first sample made at
    or after its end."""
    rows: list[IntervalRow] = []
    start = boundaries[first - 1] if first else 0.0
    for end in boundaries[first:]:
        sample = next((sample for sample in samples if sample.at >= end), None)
        if sample is None:
            return rows
        rows.append(interval_row(_label(end), start, end, log, sample, maintenance))
        start = end
    if drain and samples and samples[-1].at > start and log.between(start, math.inf):
        rows.append(interval_row(DRAIN_LABEL, start, samples[-1].at, log, samples[-1], maintenance))
    return rows


def _label(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d}"


# ---------------------------------------------------------------------------- table

HEADER = ("minute", "req/s", *KINDS.values(), "p50 ms", "p99 ms", "RSS MB", "state rows", "state MB", "inbox rows",
          "inbox MB", "index MB", "pruned")


def _cells(row: IntervalRow) -> tuple[str, ...]:
    p50, p99 = row.latency_ms.get("all", (None, None))
    return (row.label, f"{row.rate():.1f}", *(f"{row.rate(kind):.1f}" for kind in KINDS.values()),
            _number(p50), _number(p99), f"{row.sample.worker_rss_kb / 1024:.0f}",
            str(row.rows_of("flow_run_state")), f"{row.table_mb('flow_run_state'):.1f}",
            str(row.rows_of("processed_request")), f"{row.table_mb('processed_request'):.1f}",
            f"{row.index_mb:.1f}", str(row.pruned))


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_series(rows: Sequence[IntervalRow], title: str) -> str:
    """The per-interval table; `minute` is the interval's end (m:ss into the soak)."""
    lines = [_cells(row) for row in rows]
    widths = [max(len(cells[i]) for cells in [HEADER, *lines]) for i in range(len(HEADER))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.rjust(width) for cell, width in zip(cells, widths))

    return "\n".join([title, line(HEADER), line(tuple("-" * width for width in widths)), *map(line, lines)])


def progress_line(row: IntervalRow) -> str:
    p99 = row.latency_ms.get("all", (None, None))[1]
    return (f"  [soak] {row.label}: {row.rate():.1f} req/s, p99 {_number(p99)} ms, worker RSS "
            f"{row.sample.worker_rss_kb / 1024:.0f} MB, states {row.rows_of('flow_run_state')}, inbox "
            f"{row.rows_of('processed_request')} rows, pruned {row.pruned}")


# ---------------------------------------------------------------------------- plot


def plot_series(rows: Sequence[IntervalRow], path: Path, title: str) -> None:
    """Four panels: throughput by kind; p50/p99 latency; worker RSS; table and index sizes with the
    inbox and state-history row counts."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    minutes = [row.end / 60 for row in rows]
    figure, ((throughput, latency), (memory, sizes)) = pyplot.subplots(2, 2, figsize=PLOT_SIZE_INCHES, sharex=True)
    figure.suptitle(title)
    throughput.plot(minutes, [row.rate() for row in rows], label="total", linewidth=2, color="black")
    for kind in KINDS.values():
        throughput.plot(minutes, [row.rate(kind) for row in rows], label=kind)
    throughput.set(title="throughput", ylabel="requests/s")
    for share, index in (("p50", 0), ("p99", 1)):
        latency.plot(minutes, [_or_nan(row.latency_ms.get("all", (None, None))[index]) for row in rows], label=share)
    latency.set(title="latency, producer send to result (all kinds)", ylabel="ms")
    memory.plot(minutes, [row.sample.worker_rss_kb / 1024 for row in rows], label="worker, all processes")
    memory.plot(minutes, [row.sample.worker_largest_kb / 1024 for row in rows], label="worker, largest process")
    memory.plot(minutes, [row.sample.beat_rss_kb / 1024 for row in rows], label="beat")
    memory.set(title="resident memory", ylabel="MB", xlabel="minutes")
    memory.set_ylim(bottom=0)
    for table in ("flow_run_state", "processed_request", "flow_run"):
        sizes.plot(minutes, [row.table_mb(table) for row in rows], label=f"{table} MB")
    sizes.plot(minutes, [row.index_mb for row in rows], label="indexes MB (4 tables)")
    sizes.set(title="PostgreSQL sizes and rows", ylabel="MB", xlabel="minutes")
    counts = sizes.twinx()
    counts.plot(minutes, [row.rows_of("flow_run_state") for row in rows], "--", color="tab:purple",
                label="flow_run_state rows")
    counts.plot(minutes, [row.rows_of("processed_request") for row in rows], "--", color="tab:brown",
                label="processed_request rows")
    counts.set_ylabel("rows")
    counts.set_ylim(bottom=0)
    counts.legend(loc="center left", fontsize="small")
    for axes in (throughput, latency, memory, sizes):
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", fontsize="small")
        if any(row.label == DRAIN_LABEL for row in rows):
            axes.axvline(rows[-1].start / 60, color="grey", linestyle=":")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value
