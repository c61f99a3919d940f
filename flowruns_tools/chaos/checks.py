"""What the scenarios check: slots sampled while the batch runs, and every request sent compared with
what the database recorded."""

import contextlib
import dataclasses
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from flowruns_tools.chaos.producer import Driver, Request
from flowruns_tools.chaos.workload import CLEANUP, CREATE, Lifecycles

MONITOR_SECONDS = 0.02
"""The slot monitor reads every limit this often."""


SLOT_SNAPSHOT = """
SELECT l.id, l."limit", l.active_slots,
       (SELECT count(*) FROM concurrency_slot_holding h WHERE h.concurrency_limit_id = l.id) AS held,
       (SELECT count(*) FROM concurrency_slot_holding h JOIN flow_run r ON r.id = h.flow_run_id
         WHERE h.concurrency_limit_id = l.id AND r.state_type IN ('PENDING', 'RUNNING', 'CANCELLING')) AS held_by_active
FROM concurrency_limit_v2 l
"""
"""One statement, so one snapshot: an acquisition or release is either wholly in it or not at all."""


@dataclass
class SlotReading:
    samples: int = 0
    errors: int = 0
    max_drift: int = 0
    """Largest |active_slots - holding records| of any limit."""
    over_limit: int = 0
    """Readings in which some limit had more active slots (or holdings) than its limit."""
    max_stale: int = 0
    """Largest number of holdings whose run was not PENDING, RUNNING or CANCELLING."""
    max_active: int = 0
    first_violation: str | None = None

    def add(self, rows: list[Any]) -> None:
        self.samples += 1
        for limit_id, limit, active, held, held_by_active in rows:
            drift, stale = abs(active - held), held - held_by_active
            over = active > limit or held > limit
            self.max_drift = max(self.max_drift, drift)
            self.max_stale = max(self.max_stale, stale)
            self.max_active = max(self.max_active, active)
            self.over_limit += int(over)
            if (drift or stale or over) and self.first_violation is None:
                self.first_violation = (f"limit {limit_id}: limit {limit}, active_slots {active}, holdings {held}, "
                                        f"of active runs {held_by_active}")


class SlotMonitor(threading.Thread):
    """Reads every limit against its holding records every few milliseconds while the batch runs."""

    def __init__(self, database_url: str) -> None:
        super().__init__(name="slot-monitor", daemon=True)
        self.engine = sa.create_engine(database_url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                                       connect_args={"connect_timeout": 2})
        self.reading = SlotReading()
        self._halt = threading.Event()

    def run(self) -> None:
        connection = None
        while not self._halt.is_set():
            try:
                if connection is None:
                    connection = self.engine.connect()
                self.reading.add(list(connection.exec_driver_sql(SLOT_SNAPSHOT)))
            except sa.exc.DBAPIError:
                self.reading.errors += 1  # the server is restarting: read again once it is back
                if connection is not None:
                    with contextlib.suppress(Exception):
                        connection.close()
                connection = None
                self._halt.wait(0.2)
                continue
            self._halt.wait(MONITOR_SECONDS)
        if connection is not None:
            connection.close()

    def finish(self) -> SlotReading:
        self._halt.set()
        self.join(timeout=10)
        with self.engine.connect() as connection:
            self.reading.add(list(connection.exec_driver_sql(SLOT_SNAPSHOT)))  # the final state counts too
        self.engine.dispose()
        return self.reading


# ---------------------------------------------------------------------------- verdict


@dataclass
class ScenarioResult:
    name: str
    broker: str = "redis"
    requests: int = 0
    """Distinct requests (task ids) the scenario checked."""
    messages: int = 0
    """Messages the producer published for them (copies and re-sends included)."""
    applied: int = 0
    """Requests whose effect is there exactly once (bad input: refused as the contract says)."""
    lost: int = 0
    duplicated: int = 0
    slot_drift: int = 0
    over_limit: int = 0
    slot_samples: int = 0
    faults: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    """Workers that exited on their own (restarted, as a supervisor would); reported, not a loss."""
    notes: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        if self.skipped is not None:
            return True
        return (not self.errors and self.lost == 0 and self.duplicated == 0 and self.slot_drift == 0
                and self.over_limit == 0 and self.requests > 0 and self.applied == self.requests)

    @property
    def verdict(self) -> str:
        return "SKIP" if self.skipped is not None else "PASS" if self.passed else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "verdict": self.verdict}

    def error(self, message: str) -> None:
        if len(self.errors) < 50:
            self.errors.append(message)
        elif len(self.errors) == 50:
            self.errors.append("... (more errors not shown)")


@dataclass
class Recorded:
    processed: dict[str, tuple[str, Any]]
    states: dict[str, list[tuple[str, str | None, str, str]]]
    """run id -> [(state id, transition id, type, name)] in history order."""
    runs: dict[str, str | None]
    """run id -> current state type."""


def read_recorded(database_url: str) -> Recorded:
    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            processed = {row[0]: (row[1], row[2]) for row in connection.exec_driver_sql(
                "SELECT task_id, name, outcome FROM processed_request")}
            states: dict[str, list[tuple[str, str | None, str, str]]] = {}
            for run_id, state_id, transition_id, state_type, name in connection.exec_driver_sql(
                "SELECT flow_run_id, id, transition_id, type, name FROM flow_run_state ORDER BY flow_run_id, timestamp"
            ):
                states.setdefault(str(run_id), []).append(
                    (str(state_id), None if transition_id is None else str(transition_id), str(state_type), name))
            runs = {str(run_id): None if state_type is None else str(state_type)
                    for run_id, state_type in connection.exec_driver_sql("SELECT id, state_type FROM flow_run")}
    finally:
        engine.dispose()
    return Recorded(processed, states, runs)


def transition_id_of(task_id: str) -> str:
    from tasks.flow_runs import transition_id_for

    return str(transition_id_for(task_id))


def verify_lifecycles(result: ScenarioResult, workload: Lifecycles, recorded: Recorded) -> None:
    """Compare every request the producer sent with what the database holds (module docstring)."""
    requests = workload.requests
    result.requests = len(requests)
    result.messages = sum(request.sends for request in requests)
    for anomaly in workload.anomalies:
        result.error(anomaly)
    for request in requests:
        if _request_took_effect_once(result, request, recorded):
            result.applied += 1
    expected_runs = {track.run_id for track in workload.tracks if track.run_id is not None}
    for run_id in set(recorded.runs) - expected_runs:
        result.duplicated += 1
        result.error(f"run {run_id} exists but no create request returned it")
    for track in workload.tracks:
        if track.run_id is None:
            continue
        history = recorded.states.get(track.run_id, [])
        accounted = {str(request.result["state"]["id"]) for request in track.requests
                     if request.succeeded and isinstance(request.result, dict) and request.result.get("state")}
        for state_id, _transition, _type, name in history:
            if state_id not in accounted:
                result.duplicated += 1
                result.error(f"run {track.index}: state {name} ({state_id}) was written but no request's outcome names it")
        transitions = Counter(transition for _id, transition, _type, _name in history if transition is not None)
        for transition, count in transitions.items():
            if count > 1:
                result.duplicated += count - 1
                result.error(f"run {track.index}: transition id {transition} appears {count} times")
        last = next((r.result for r in reversed(track.requests) if r.succeeded and r.name != CLEANUP), None)
        final = recorded.runs.get(track.run_id)
        if last is not None and last.get("state") and final != last["state"]["type"]:
            result.error(f"run {track.index}: current state {final}, the last outcome says {last['state']['type']}")
        if track.done and final not in ("COMPLETED", "FAILED"):
            result.error(f"run {track.index} ended {final}, not COMPLETED or FAILED")


def _request_took_effect_once(result: ScenarioResult, request: Request, recorded: Recorded) -> bool:
    track = request.tag[0] if isinstance(request.tag, tuple) else None
    where = f"run {track.index}: " if track is not None else ""
    label = f"{where}{request.name}[{request.task_id}]"
    if request.meta is None:
        result.lost += 1
        result.error(f"{label}: no result")
        return False
    inbox = recorded.processed.get(request.task_id)
    if not request.succeeded:
        if inbox is not None:
            result.duplicated += 1
            result.error(f"{label}: failed ({request.exc_type}) yet recorded")
        return False
    if inbox is None:
        result.lost += 1
        result.error(f"{label}: succeeded but has no inbox row")
        return False
    name, outcome = inbox
    if name != request.name:
        result.error(f"{label}: the inbox row names {name}")
        return False
    if outcome != request.result:
        result.duplicated += 1
        result.error(f"{label}: the producer got an outcome other than the recorded one")
        return False
    if request.name == CLEANUP:
        return True
    state = (request.result or {}).get("state")
    run_id = str(request.result["id"]) if request.name == CREATE else str(request.kwargs["flow_run_id"])
    history = recorded.states.get(run_id, [])
    if request.name == CREATE:
        if not history or (state and history[0][0] != str(state["id"])):
            result.lost += 1
            result.error(f"{label}: the run's first state is not the one its create returned")
            return False
        return True
    if state is None:
        result.error(f"{label}: outcome without a state")
        return False
    written = [entry for entry in history if entry[0] == str(state["id"])]
    if not written:
        result.lost += 1
        result.error(f"{label}: its outcome's state {state['name']} is not in the run's history")
        return False
    if request.result["status"] == "ACCEPT" and written[0][1] != transition_id_of(request.task_id):
        result.error(f"{label}: the accepted state carries transition id {written[0][1]}")
        return False
    return True


def apply_slot_reading(result: ScenarioResult, reading: SlotReading) -> None:
    result.slot_samples = reading.samples
    result.slot_drift = max(reading.max_drift, reading.max_stale)
    result.over_limit = reading.over_limit
    result.notes["max_active_slots"] = reading.max_active
    if reading.errors:
        result.notes["slot_readings_missed"] = reading.errors
    if reading.first_violation:
        result.error(f"slots: {reading.first_violation}")


def delivery_counts(log: str) -> tuple[Counter[str], Counter[str], int, int]:
    """From the worker logs: deliveries per task id, retries per task id (each a new message under the
    same id), copies the inbox absorbed, and tasks a killed pool process was running."""
    received = Counter(re.findall(r"Task [\w.]+\[([0-9a-f-]{36})\] received", log))
    retried = Counter(re.findall(r"Task [\w.]+\[([0-9a-f-]{36})\] retry: Retry in", log))
    absorbed = len(re.findall(r"already processed; returning the recorded outcome", log))
    lost_workers = len(re.findall(r"Task handler raised error: WorkerLostError|lost its pool process|\] parked: ", log))
    return received, retried, absorbed, lost_workers


def note_deliveries(result: ScenarioResult, driver: Driver, log: str) -> None:
    """Deliveries beyond the messages the producer published and the retries the worker published are
    the broker's own redeliveries (a requeue after a lost pool process, a restore after the visibility
    timeout, a copy restored at a connection loss)."""
    received, retried, absorbed, lost_workers = delivery_counts(log)
    sends = {request.task_id: request.sends for request in driver.requests.values()}
    redelivered = sum(max(0, received[task_id] - sent - retried[task_id]) for task_id, sent in sends.items())
    result.notes.update({
        "deliveries": sum(received[task_id] for task_id in sends),
        "broker_redeliveries": redelivered,
        "producer_resends": driver.resends,
        "absorbed_by_inbox": absorbed,
        "connection_retries": sum(retried.values()),
        "tasks_interrupted_by_kills": lost_workers,
    })
    if driver.send_errors:
        result.notes["send_errors"] = driver.send_errors
    if driver.transient_failures:
        result.notes["transient_failures_resent"] = driver.transient_failures
