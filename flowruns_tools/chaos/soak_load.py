"""The soak's moving parts: beat as a process of its own, runs launched without end, reads and counts at
a steady rate; and what each finished request leaves behind: its kind, time and latency, and its
inbox row, read before beat prunes it."""

import bisect
import random
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from flowruns_tools.chaos.producer import Driver, Request
from flowruns_tools.chaos.workload import (
    CLEANUP,
    CREATE,
    SET_STATE,
    Lifecycles,
    RunTrack,
)

READ = "flow_runs.read_flow_runs"
COUNT = "flow_runs.count_flow_runs"
KINDS = {CREATE: "create", SET_STATE: "transition", READ: "read", COUNT: "count", CLEANUP: "cleanup"}
"""The request kinds the soak reports, by task name, in the order of its table."""
RECORDED = frozenset({CREATE, SET_STATE, CLEANUP})
"""The kinds that leave an inbox row."""
QUERY_PERIOD_SECONDS = 0.25
"""A read and a count are sent this often..."""
QUERIES_OUTSTANDING = 8
"""... unless this many of that kind still wait for their result (the worker is behind: no pile-up)."""
READ_PAGE = 50
BEAT_STOP_SECONDS = 20.0
INBOX_READ_CHUNK = 1000


class BeatProcess:
    """`celery -A tasks beat` as a subprocess with the worker's environment, its schedule file in a
    directory of its own; stopped by pid."""

    def __init__(self, env: dict[str, str], log_dir: Path, label: str, code: Path) -> None:
        self.env = env
        self.code = code
        self.directory = Path(tempfile.mkdtemp(prefix="flowruns-soak-beat-"))
        self.log = log_dir / f"beat-{label}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "celery", "-A", "tasks", "beat", "--loglevel", "INFO",
                   "--schedule", str(self.directory / "schedule"), "--pidfile", str(self.directory / "beat.pid")]
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(command, cwd=self.code, env=self.env, stdout=output,
                                            stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def pids(self) -> list[int]:
        return [self.process.pid] if self.alive() and self.process is not None else []

    def stop(self) -> None:
        """SIGTERM by pid; SIGKILL if it does not end in time. The schedule directory goes too."""
        if self.alive() and self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=BEAT_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, characters: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-characters:] if self.log.exists() else ""


class SteadyRuns(Lifecycles):
    """Lifecycles without a fixed number of runs: each run that ends is followed by a new one (on the
    next deployment in turn) until `stop_launching`; every finished request is also `observe`d."""

    def __init__(self, driver: Driver, flow_id: str, deployment_ids: list[str], window: int, rng: random.Random,
                 observe: Callable[[Request], None]) -> None:
        super().__init__(driver, flow_id, deployment_ids, runs=0, window=window, rng=rng, cleanups=True)
        self.deployment_ids = deployment_ids
        self.observe = observe
        self.launching = True

    def stop_launching(self) -> None:
        self.launching = False

    def done(self) -> bool:
        return not self.launching and super().done()

    def _launch(self) -> None:
        if self.launching:
            index = len(self.tracks)
            self.tracks.append(RunTrack(index, self.deployment_ids[index % len(self.deployment_ids)]))
        super()._launch()

    def _on_done(self, request: Request) -> None:
        self.observe(request)
        super()._on_done(request)


class Queries:
    """Reads (a page of finished runs) and counts (the runs of the limited deployments) at a steady
    rate through the same driver."""

    def __init__(self, driver: Driver, limited: list[str], observe: Callable[[Request], None]) -> None:
        self.driver = driver
        self.observe = observe
        self.kwargs: dict[str, dict[str, Any]] = {
            READ: {"flow_run_filter": {"state": {"type": {"any_": ["COMPLETED", "FAILED"]}}}, "limit": READ_PAGE},
            COUNT: {"deployment_filter": {"id": {"any_": limited}}},
        }
        self.outstanding = {READ: 0, COUNT: 0}
        self.sent = {READ: 0, COUNT: 0}
        self.failures: list[str] = []
        self.running = True
        self._next = 0.0

    def tick(self, now: float) -> None:
        if not self.running or now < self._next:
            return
        self._next = now + QUERY_PERIOD_SECONDS
        for name, kwargs in self.kwargs.items():
            if self.outstanding[name] < QUERIES_OUTSTANDING:
                self.outstanding[name] += 1
                self.sent[name] += 1
                self.driver.submit(name, kwargs, on_done=self._on_done)

    def idle(self) -> bool:
        return not any(self.outstanding.values())

    def _on_done(self, request: Request) -> None:
        self.outstanding[request.name] -= 1
        self.observe(request)
        expected = list if request.name == READ else int
        if not request.succeeded or not isinstance(request.result, expected):
            self.failures.append(f"{request.name}[{request.task_id}]: {request.exc_type or 'got'} {request.result!r:.300}")
        # A page of runs is not needed once measured: the producer's memory stays flat.
        self.driver.requests.pop(request.task_id, None)


@dataclass(frozen=True)
class Finished:
    at: float
    """Seconds into the soak when the producer had the result."""
    kind: str
    latency: float
    """Seconds from the first send to the result."""


@dataclass
class RequestLog:
    """Every finished request the soak sent, in the order their results came."""

    started: float
    finished: list[Finished] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    """`finished`'s times, ascending (results are logged as they come)."""

    def add(self, request: Request) -> None:
        if request.finished is None or request.latency is None:
            return
        at = request.finished - self.started
        self.finished.append(Finished(at, KINDS[request.name], request.latency))
        self.times.append(at)

    def between(self, start: float, end: float) -> list[Finished]:
        """The requests whose results came in (start, end]."""
        return self.finished[bisect.bisect_right(self.times, start):bisect.bisect_right(self.times, end)]


class InboxEvidence:
    """The inbox rows of finished requests, read while they exist: beat prunes them after the
    retention, and the exactly-once check needs each request's row."""

    def __init__(self, database_url: str) -> None:
        self.engine = sa.create_engine(database_url, poolclass=NullPool)
        self.waiting: list[Request] = []
        self.rows: dict[str, tuple[str, Any]] = {}
        self.read = 0

    def add(self, request: Request) -> None:
        if request.name in RECORDED:
            self.waiting.append(request)

    def capture(self) -> None:
        """Read the rows of the requests finished since the last capture."""
        waiting, self.waiting = self.waiting, []
        for start in range(0, len(waiting), INBOX_READ_CHUNK):
            self._capture(waiting[start:start + INBOX_READ_CHUNK])

    def _capture(self, requests: Iterable[Request]) -> None:
        by_id = {request.task_id: request for request in requests}
        with self.engine.connect() as connection:
            found = connection.exec_driver_sql(
                "SELECT task_id, name, outcome FROM processed_request WHERE task_id = ANY(%(ids)s)",
                {"ids": list(by_id)})
            for task_id, name, outcome in found:
                result = by_id[task_id].result
                # Where the row agrees with the result, keep the result's object: one copy in memory.
                self.rows[task_id] = (name, result if outcome == result else outcome)
        self.read += len(by_id)

    def close(self) -> None:
        self.engine.dispose()
