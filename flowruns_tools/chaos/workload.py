"""The batch the lifecycle scenarios send: runs on limited deployments driven through their lives."""

import random
from dataclasses import dataclass, field
from typing import Any

from flowruns_tools.chaos.producer import Driver, Request

CREATE = "flow_runs.create_flow_run"
SET_STATE = "flow_runs.set_flow_run_state"
CLEANUP = "flow_runs.cleanup_flow_run_concurrency_slots"
FAILED_SHARE = 0.2
SLOT_RETRY_SECONDS = (0.2, 0.8)
"""A run rejected into AwaitingConcurrencySlot proposes PENDING again after this long (uniform)."""


@dataclass(eq=False)
class RunTrack:
    """One run's life as the producer drives it."""

    index: int
    deployment_id: str
    run_id: str | None = None
    requests: list[Request] = field(default_factory=list)
    done: bool = False
    waits: int = 0


class Lifecycles:
    """Runs on limited deployments, each driven SCHEDULED (at create) -> PENDING -> RUNNING -> COMPLETED or
    FAILED, one request outstanding per run, `window` runs at a time. A PENDING proposal rejected into
    AwaitingConcurrencySlot is proposed again (a new request) a moment later.
    """

    def __init__(self, driver: Driver, flow_id: str, deployment_ids: list[str], runs: int, window: int,
                 rng: random.Random, cleanups: bool = False) -> None:
        self.driver = driver
        self.flow_id = flow_id
        self.rng = rng
        self.window = window
        self.cleanups = cleanups
        self.tracks = [RunTrack(index, deployment_ids[index % len(deployment_ids)]) for index in range(runs)]
        self.launched = 0
        self.finished = 0
        self.anomalies: list[str] = []

    @property
    def requests(self) -> list[Request]:
        return [request for track in self.tracks for request in track.requests]

    def start(self) -> None:
        for _ in range(self.window):
            self._launch()

    def done(self) -> bool:
        return self.finished == len(self.tracks)

    def progress(self) -> float:
        return self.finished / len(self.tracks) if self.tracks else 1.0

    def _launch(self) -> None:
        if self.launched >= len(self.tracks):
            return
        track = self.tracks[self.launched]
        self.launched += 1
        flow_run = {
            "flow_id": self.flow_id, "deployment_id": track.deployment_id, "name": f"chaos-{track.index}",
            "idempotency_key": f"chaos-{track.index}", "state": {"type": "SCHEDULED"},
        }
        self._submit(track, CREATE, {"flow_run": flow_run}, "create")

    def _submit(self, track: RunTrack, name: str, kwargs: dict[str, Any], step: str) -> None:
        track.requests.append(self.driver.submit(name, kwargs, on_done=self._on_done, tag=(track, step)))

    def _propose(self, track: RunTrack, state_type: str) -> None:
        kwargs = {"flow_run_id": track.run_id, "state": {"type": state_type}}
        self._submit(track, SET_STATE, kwargs, state_type)

    def _finish(self, track: RunTrack) -> None:
        if self.cleanups and track.run_id is not None:
            # Cleanup may run any number of times: sent (twice, by the duplicate scenario) after the end.
            self._submit(track, CLEANUP, {"flow_run_id": track.run_id}, "cleanup")
            return
        self._close(track)

    def _close(self, track: RunTrack) -> None:
        track.done = True
        self.finished += 1
        self._launch()

    def _on_done(self, request: Request) -> None:
        track, step = request.tag
        if not request.succeeded:
            self.anomalies.append(f"run {track.index}: {request.name}[{request.task_id}] failed: {request.result}")
            self._close(track)
            return
        result = request.result
        if step == "cleanup":
            self._close(track)
        elif step == "create":
            track.run_id = result["id"]
            self._propose(track, "PENDING")
        else:
            self._after_proposal(track, step, result)

    def _after_proposal(self, track: RunTrack, step: str, result: dict[str, Any]) -> None:
        status, state = result.get("status"), result.get("state") or {}
        if status == "ACCEPT":
            if step == "PENDING":
                self._propose(track, "RUNNING")
            elif step == "RUNNING":
                self._propose(track, "FAILED" if self.rng.random() < FAILED_SHARE else "COMPLETED")
            else:
                self._finish(track)
        elif status == "REJECT" and step == "PENDING" and state.get("name") == "AwaitingConcurrencySlot":
            track.waits += 1
            self.driver.later(self.rng.uniform(*SLOT_RETRY_SECONDS), lambda: self._propose(track, "PENDING"))
        elif status == "WAIT":
            delay = float((result.get("details") or {}).get("delay_seconds") or 0.1)
            self.driver.later(min(max(delay, 0.05), 2.0), lambda: self._propose(track, step))
        else:
            self.anomalies.append(f"run {track.index}: {step} got {status} {state.get('name')}: "
                                  f"{(result.get('details') or {}).get('reason')}")
            self._close(track)
