"""`flowruns chaos --soak MINUTES`: a steady mixed load through the real worker, beat running beside
it, measured every interval and checked exactly-once at the end.

Runs on limited deployments (ENQUEUE) and on unlimited ones go SCHEDULED -> PENDING -> RUNNING ->
COMPLETED or FAILED, then cleanup, a steady window of them in flight (a new run as each ends), with
reads and counts at a steady rate beside them, until the deadline; then the runs in flight finish
and the queue drains. Beat runs with its intervals and the inbox retention shortened, so that the
inbox visibly grows and is pruned back while the state history keeps growing.

Beat prunes the inbox rows the exactly-once check needs: the soak reads each finished request's
row well within the retention and checks every request against the rows as it read them
(`checks.verify_lifecycles`, unchanged), with every run's whole history read at the end.
"""

import json
import math
import random
import shutil
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flowruns_tools.chaos.checks import (
    Recorded,
    ScenarioResult,
    SlotMonitor,
    apply_slot_reading,
    note_deliveries,
    read_recorded,
    verify_lifecycles,
)
from flowruns_tools.chaos.producer import RESEND_AFTER_SECONDS, Request
from flowruns_tools.chaos.scenarios import (
    DRAIN_SECONDS,
    Options,
    World,
    note_supervisor,
    world,
)
from flowruns_tools.chaos.services import forget_queue, say
from flowruns_tools.chaos.soak_load import (
    COUNT,
    READ,
    BeatProcess,
    InboxEvidence,
    Queries,
    RequestLog,
    SteadyRuns,
)
from flowruns_tools.chaos.soak_report import (
    PRUNE_TASK,
    RECONCILE_TASK,
    IntervalRow,
    MaintenanceRun,
    Sampler,
    build_rows,
    format_series,
    plot_series,
    progress_line,
)

DEFAULT_INTERVAL_SECONDS = 60.0
DEFAULT_PLOT = "flowruns-soak.png"
LIMITED_DEPLOYMENTS = 4
UNLIMITED_DEPLOYMENTS = 2
LIMIT = 3
WINDOW = 24
"""Runs in flight at once: twice the limited deployments' slots, so some always wait for one."""
MAX_RETENTION_SECONDS = 300.0
MAX_PRUNE_EVERY_SECONDS = 60.0
MAX_RECONCILE_EVERY_SECONDS = 30.0
MAX_LATE_RUNS_EVERY_SECONDS = 5.0
LATE = "Late"


@dataclass(frozen=True)
class SoakPlan:
    """How long, how often to measure, and beat's timing (scaled to the duration unless given)."""

    minutes: float
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    plot: Path = Path(DEFAULT_PLOT)
    retention_seconds: float | None = None
    prune_every_seconds: float | None = None
    window: int = WINDOW

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def retention(self) -> float:
        """The inbox retention: a sixth of the soak (5 minutes at most), so pruning shows several times."""
        return self.retention_seconds or min(MAX_RETENTION_SECONDS, max(10.0, self.seconds / 6))

    @property
    def prune_every(self) -> float:
        return self.prune_every_seconds or min(MAX_PRUNE_EVERY_SECONDS, max(2.0, self.retention / 5))

    @property
    def reconcile_every(self) -> float:
        return min(MAX_RECONCILE_EVERY_SECONDS, max(2.0, self.prune_every / 2))

    @property
    def late_runs_every(self) -> float:
        return min(MAX_LATE_RUNS_EVERY_SECONDS, self.reconcile_every)

    @property
    def capture_every(self) -> float:
        """Finished requests' inbox rows are read this often: well before beat may prune them."""
        return min(self.interval_seconds, self.retention / 4)

    @property
    def resend_after(self) -> float:
        """The producer re-sends within the retention, while the inbox still absorbs the copy."""
        return min(RESEND_AFTER_SECONDS, self.retention / 3)

    def boundaries(self) -> list[float]:
        """The interval ends up to the deadline (the last may be shorter)."""
        count = max(1, math.ceil(self.seconds / self.interval_seconds - 1e-9))
        return [min(self.interval_seconds * index, self.seconds) for index in range(1, count + 1)]

    def worker_settings(self) -> dict[str, float]:
        """FLOWRUNS_* values for the worker and beat (tasks/beat.py reads the intervals)."""
        return {
            "processed_request_retention_seconds": self.retention,
            "prune_requests_interval_seconds": self.prune_every,
            "reconcile_slots_interval_seconds": self.reconcile_every,
            "late_runs_interval_seconds": self.late_runs_every,
        }

    def as_dict(self) -> dict[str, Any]:
        return {"minutes": self.minutes, "interval_seconds": self.interval_seconds, "plot": str(self.plot),
                "window": self.window, "capture_every_seconds": self.capture_every,
                "resend_after_seconds": self.resend_after, **self.worker_settings()}


@dataclass
class SoakRun:
    """What a soak measured and concluded."""

    plan: SoakPlan
    result: ScenarioResult
    rows: list[IntervalRow] = field(default_factory=list)
    maintenance: list[MaintenanceRun] = field(default_factory=list)


def run_soak(options: Options, plan: SoakPlan) -> SoakRun:
    """The soak on a World of its own (database, Redis database, queue, worker) with beat beside it."""
    result = ScenarioResult("soak", broker=options.broker)
    with world(options, "soak", worker_settings=plan.worker_settings(), resend_after=plan.resend_after) as scenario:
        scenario.start_worker()
        beat = BeatProcess(scenario.worker.env, scenario.worker.log_dir, scenario.name, scenario.worker.code)
        try:
            beat.start()
            soak = _drive(scenario, beat, plan, random.Random(options.seed), result)
        finally:
            beat.stop()
            if not options.exclusive_redis and not scenario.on_rabbitmq:
                forget_queue(scenario.broker_url, f"{scenario.queue}.maintenance")  # beat's results
    return soak


def _deployments(scenario: World) -> tuple[str, list[str], list[str]]:
    flow_id, limited = scenario.make_deployments(LIMITED_DEPLOYMENTS, LIMIT)
    unlimited = [scenario.driver.call("deployments.create_deployment", {"deployment": {
        "name": f"unlimited-{index}", "flow_id": flow_id, "concurrency_limit": None}})["id"]
        for index in range(UNLIMITED_DEPLOYMENTS)]
    return flow_id, limited, unlimited


def _drive(scenario: World, beat: BeatProcess, plan: SoakPlan, rng: random.Random,
           result: ScenarioResult) -> SoakRun:
    flow_id, limited, unlimited = _deployments(scenario)
    driver = scenario.driver
    started = time.monotonic()
    log = RequestLog(started)
    evidence = InboxEvidence(scenario.database_url)

    def observe(request: Request) -> None:
        log.add(request)
        evidence.add(request)
        if request.meta is not None:
            # The checks read the status and result only; the rest of the stored meta (kwargs, worker,
            # dates) would hold gigabytes over a long soak.
            request.meta = {"status": request.meta.get("status"), "result": request.meta.get("result")}

    runs = SteadyRuns(driver, flow_id, limited + unlimited, plan.window, rng, observe)
    queries = Queries(driver, limited, observe)
    boundaries = plan.boundaries()
    monitor = SlotMonitor(scenario.database_url)
    sampler = Sampler(scenario.database_url, started, boundaries,
                      lambda: [scenario.worker.pid, *scenario.worker.children()], beat.pids)
    deadline = started + plan.seconds
    next_capture = [started + plan.capture_every]
    shown, samples_seen = [0], [0]

    def tick() -> None:
        now = time.monotonic()
        scenario.tick()
        if runs.launching and now >= deadline:
            runs.stop_launching()
            queries.running = False
            say(f"  [soak] deadline: finishing the {runs.launched - runs.finished} runs in flight ...")
        queries.tick(now)
        if now >= next_capture[0]:
            evidence.capture()
            next_capture[0] = now + plan.capture_every
        if len(sampler.samples) != samples_seen[0]:
            samples_seen[0] = len(sampler.samples)
            for row in build_rows(log, sampler.samples, sampler.maintenance, boundaries, first=shown[0], drain=False):
                say(progress_line(row))
                shown[0] += 1

    say(f"  [soak] {plan.minutes:g} min, a row every {plan.interval_seconds:g}s; beat: retention "
        f"{plan.retention:g}s, prune every {plan.prune_every:g}s, reconcile every {plan.reconcile_every:g}s")
    monitor.start()
    sampler.start()
    try:
        runs.start()
        if not driver.run_until(lambda: runs.done() and queries.idle(), deadline + DRAIN_SECONDS, tick):
            result.error(f"the runs in flight did not finish within {DRAIN_SECONDS:.0f}s of the deadline "
                         f"({runs.launched - runs.finished} left)")
        evidence.capture()
        if not scenario.drain():
            result.error(f"messages still queued or unacknowledged after {DRAIN_SECONDS:.0f}s: {scenario.backlog()}")
        evidence.capture()
    finally:
        sampler.finish()
        reading = monitor.finish()
        evidence.close()
    if not beat.alive():
        result.error(f"beat exited during the soak: {beat.log_tail()}")
    beat.stop()
    apply_slot_reading(result, reading)
    scenario.workers.stop()
    verify_soak(result, runs, queries, evidence, read_recorded(scenario.database_url), sampler.maintenance)
    note_deliveries(result, driver, scenario.workers.log_text())
    note_supervisor(result, scenario)
    result.errors.extend(sampler.errors[:5])
    rows = build_rows(log, sampler.samples, sampler.maintenance, boundaries)
    return SoakRun(plan, result, rows, sampler.maintenance)


def verify_soak(result: ScenarioResult, runs: SteadyRuns, queries: Queries, evidence: InboxEvidence,
                recorded: Recorded, maintenance: list[MaintenanceRun]) -> None:
    """Every request against the inbox rows as read before pruning and every run's whole history
    (`verify_lifecycles`); every read and count answered; beat's own writes set apart and counted."""
    recorded.processed.update(evidence.rows)
    late = set_aside_beats_late_states(recorded)
    verify_lifecycles(result, runs, recorded)
    for failure in queries.failures:
        result.error(f"query failed: {failure}")
    repairs = [run.outcome for run in maintenance if run.task == RECONCILE_TASK and any((run.outcome or {}).values())]
    if repairs:
        result.error(f"beat's reconciler repaired slot bookkeeping in {len(repairs)} firings (first: {repairs[0]}): "
                     "drift the slot monitor may not have seen")
    result.notes.update({
        "runs": len(runs.tracks),
        "awaiting_slot_rejections": sum(track.waits for track in runs.tracks),
        "reads": queries.sent[READ], "counts": queries.sent[COUNT],
        "inbox_rows_read_before_pruning": evidence.read,
        "inbox_rows_pruned": sum(int(run.outcome or 0) for run in maintenance if run.task == PRUNE_TASK),
        "prune_runs": sum(1 for run in maintenance if run.task == PRUNE_TASK),
        "marked_late_by_beat": late,
    })


def set_aside_beats_late_states(recorded: Recorded) -> int:
    """beat's late-runs task writes Late on its own, without a transition id (every request's state
    carries one): those states are beat's, no request's outcome names them. Removes and counts them."""
    removed = 0
    for run_id, history in recorded.states.items():
        kept = [state for state in history if not (state[3] == LATE and state[1] is None)]
        removed += len(history) - len(kept)
        recorded.states[run_id] = kept
    return removed


def run_and_plot(options: Options, plan: SoakPlan) -> SoakRun:
    """The soak, a set-up failure or crash as its verdict (never an exception); then its plot."""
    started = time.monotonic()
    try:
        soak = run_soak(options, plan)
    except Exception as error:  # noqa: BLE001 - a set-up failure or crash is the soak's verdict
        soak = SoakRun(plan, ScenarioResult("soak", broker=options.broker))
        soak.result.error(f"crashed: {type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}")
    soak.result.seconds = round(time.monotonic() - started, 1)
    if soak.rows:
        plan.plot.parent.mkdir(parents=True, exist_ok=True)
        plot_series(soak.rows, plan.plot, soak_title(plan, options))
        say(f"plot written to {plan.plot}")
    return soak


def soak_title(plan: SoakPlan, options: Options) -> str:
    return (f"flowruns chaos --soak {plan.minutes:g}: {options.broker}, a row every {plan.interval_seconds:g}s, "
            f"inbox retention {plan.retention:g}s, pruned every {plan.prune_every:g}s")


def soak_text(soak: SoakRun, options: Options) -> str:
    """The series table, then the verdict table the scenarios print."""
    from flowruns_tools.chaos.runner import format_table

    return "\n".join([format_series(soak.rows, soak_title(soak.plan, options)),
                      format_table([soak.result], options, soak.result.seconds)])


def soak_json(soak: SoakRun, options: Options) -> dict[str, Any]:
    return {"mode": "soak", "soak": soak.plan.as_dict(), "broker": options.broker, "seed": options.seed,
            "seconds": soak.result.seconds, "passed": soak.result.passed,
            "series": [row.as_dict() for row in soak.rows],
            "maintenance": [asdict(run) for run in soak.maintenance],
            "scenarios": [soak.result.as_dict()]}


def soak_command(options: Options, plan: SoakPlan, as_json: bool) -> int:
    """Run the soak; print the series and the verdict (or JSON); write the plot; 0 only if it passed."""
    keep = options.log_dir is not None
    options.log_dir = options.log_dir or Path(tempfile.mkdtemp(prefix="flowruns-chaos-logs-"))
    say(f"flowruns chaos --soak {plan.minutes:g} ({options.broker}), seed {options.seed}; worker and beat logs in "
        f"{options.log_dir}")
    soak = run_and_plot(options, plan)
    print(json.dumps(soak_json(soak, options), indent=2, default=str) if as_json else soak_text(soak, options))
    if soak.result.passed and not keep:
        shutil.rmtree(options.log_dir, ignore_errors=True)
    elif not soak.result.passed:
        say(f"worker and beat logs kept in {options.log_dir}")
    return 0 if soak.result.passed else 1
