"""`flowruns demo`: an in-process worker on an in-memory broker and a SQLite file, driven
through the wire contract exactly as a foreign producer would (task names, JSON kwargs).

The workload: one deployment limited to 2 concurrent runs (ENQUEUE), eight runs competing
for its slots, one run failing once and being retried, one cancelled, one deleted while it
holds a slot, and a run whose task runs depend on each other. Every round checks that the
deployment never has more runs holding slots than its limit; the summary shows final states,
slot counts and one run's graph. Exit status 1 if any invariant failed.
"""

import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from celery import Celery

TIMEOUT = 30.0
POLL_SECONDS = 0.005
LIMIT = 2


class Producer:
    """Sends contract tasks by name with JSON kwargs, as a codebase without flowruns would."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.sent = 0

    def call(self, name: str, **kwargs: Any) -> Any:
        self.sent += 1
        result = self.app.send_task(name, kwargs=kwargs, task_id=str(uuid.uuid4()))
        return result.get(timeout=TIMEOUT, interval=POLL_SECONDS, propagate=True)


class Checks:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def expect(self, condition: bool, message: str) -> None:
        if not condition:
            self.failures.append(message)
            say(f"  !! {message}")


def say(message: str) -> None:
    print(message, flush=True)


def run_demo(runs: int = 8, database: str | None = None) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="flowruns-demo-"))
    db_path = Path(database) if database else workdir / "flowruns.db"
    os.environ.update(
        FLOWRUNS_DATABASE_URL=f"sqlite:///{db_path}",
        FLOWRUNS_BROKER_URL="memory://",
        FLOWRUNS_RESULT_BACKEND="cache+memory://",
        # The demo runs at demo pace: waiting runs may try again after one second.
        FLOWRUNS_CONCURRENCY_SLOT_WAIT_SECONDS="1",
    )
    from models import database as db
    from models import migrations
    from models.settings import reset_settings

    reset_settings()
    db.dispose_engines()
    say(f"flowruns demo — SQLite database {db_path}, in-memory broker, in-process worker")
    migrations.upgrade()

    from celery.contrib.testing.worker import start_worker

    from tasks import app  # with every task registered

    app.conf.update(
        broker_url="memory://",
        result_backend="cache+memory://",
        # The in-memory transport polls; poll often so a round trip takes milliseconds, not a second.
        broker_transport_options={"polling_interval": POLL_SECONDS},
    )
    checks = Checks()
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="ERROR"):
        producer = Producer(app)
        started = time.perf_counter()
        summary = drive_workload(producer, checks, runs)
        elapsed = time.perf_counter() - started
    print_summary(summary, checks, producer.sent, elapsed)
    return 1 if checks.failures else 0


def drive_workload(producer: Producer, checks: Checks, runs: int) -> dict[str, Any]:
    call = producer.call
    flow = call("flows.create_flow", flow={"name": "nightly-etl", "tags": ["demo"]})
    deployment = call(
        "deployments.create_deployment",
        deployment={
            "name": "warehouse-load",
            "flow_id": flow["id"],
            "concurrency_limit": LIMIT,
            "concurrency_options": {"collision_strategy": "ENQUEUE"},
        },
    )
    say(f"deployment {deployment['name']!r} with a concurrency limit of {LIMIT}")

    ids = []
    for index in range(runs):
        run = call(
            "flow_runs.create_flow_run",
            flow_run={
                "flow_id": flow["id"],
                "deployment_id": deployment["id"],
                "name": f"load-{index + 1}",
                "idempotency_key": f"demo-load-{index + 1}",
                "empirical_policy": {"retries": 1, "retry_delay": 0},
                "tags": ["demo"],
                "state": {"type": "SCHEDULED"},
            },
        )
        ids.append(run["id"])
    say(f"created {runs} scheduled runs")

    fail_once, cancel, delete = ids[1], ids[2], ids[3]
    failed_already: set[str] = set()
    tasks_added = False
    deleted: set[str] = set()
    graph_run = ids[0]

    def propose(run_id: str, state: dict[str, Any]) -> dict[str, Any]:
        return call("flow_runs.set_flow_run_state", flow_run_id=run_id, state=state)

    rounds = 0
    while rounds < 60:
        rounds += 1
        states = {run_id: current_type(call, run_id) for run_id in ids if run_id not in deleted}
        if all(t in {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"} for t in states.values()):
            break
        for run_id, state_type in states.items():
            if state_type == "SCHEDULED":
                propose(run_id, {"type": "PENDING"})
            elif state_type == "PENDING":
                propose(run_id, {"type": "RUNNING"})
            elif state_type == "RUNNING":
                if run_id == delete:
                    call("flow_runs.delete_flow_run", flow_run_id=run_id)
                    deleted.add(run_id)
                    say(f"  round {rounds}: deleted {name_of(ids, run_id)} while it held a slot")
                elif run_id == cancel:
                    propose(run_id, {"type": "CANCELLING"})
                elif run_id == graph_run and not tasks_added:
                    # task runs start only inside a running flow run (Prefect's core task policy)
                    add_task_runs(call, run_id, checks)
                    tasks_added = True
                elif run_id == fail_once and run_id not in failed_already:
                    failed_already.add(run_id)
                    result = propose(run_id, {"type": "FAILED", "message": "warehouse timeout"})
                    say(f"  round {rounds}: {name_of(ids, run_id)} failed → {result['state']['name']}")
                else:
                    propose(run_id, {"type": "COMPLETED"})
            elif state_type == "CANCELLING":
                propose(run_id, {"type": "CANCELLED"})
        slots = read_slots(call, deployment["id"])
        tally = Counter(current_type(call, r) for r in ids if r not in deleted)
        say(f"round {rounds:2}: slots {slots['active_slots']}/{slots['limit']}  " +
            "  ".join(f"{k.lower()} {v}" for k, v in sorted(tally.items())))
        checks.expect(slots["active_slots"] <= LIMIT, f"round {rounds}: {slots['active_slots']} slots held, limit {LIMIT}")
        if tally.get("SCHEDULED") and not tally.get("PENDING") and not tally.get("RUNNING"):
            time.sleep(1.0)  # every waiting run is AwaitingConcurrencySlot for a second

    for run_id in ids:
        call("flow_runs.cleanup_flow_run_concurrency_slots", flow_run_id=run_id)
    final_slots = read_slots(call, deployment["id"])
    checks.expect(final_slots["active_slots"] == 0, f"slots still held at the end: {final_slots['active_slots']}")

    finals: dict[str, Any] = {}
    for run_id in ids:
        if run_id in deleted:
            finals[name_of(ids, run_id)] = ("deleted", [])
            continue
        history = call("flow_run_states.read_flow_run_states", flow_run_id=run_id)
        names = [state["name"] for state in history]
        finals[name_of(ids, run_id)] = (history[-1]["type"], names)
        stamps = [state["timestamp"] for state in history]
        checks.expect(len(set(stamps)) == len(stamps), f"{name_of(ids, run_id)} has duplicate history entries")
        checks.expect(stamps == sorted(stamps), f"{name_of(ids, run_id)} history is out of order")
    fail_history = finals[name_of(ids, fail_once)][1]
    checks.expect("AwaitingRetry" in fail_history, "the failing run was not retried")
    checks.expect(finals[name_of(ids, cancel)][0] == "CANCELLED", "the cancelled run did not end CANCELLED")
    total = call("flow_runs.count_flow_runs")
    checks.expect(total == runs - 1, f"count_flow_runs says {total}, expected {runs - 1}")
    graph = call("flow_runs.read_flow_run_graph", flow_run_id=graph_run)
    return {"finals": finals, "slots": final_slots, "graph": graph, "graph_run": name_of(ids, graph_run)}


def add_task_runs(call: Any, flow_run_id: str, checks: Checks) -> None:
    """extract → (clean, validate) → load, each task depending on its upstream results, each run
    to completion inside the (running) flow run."""
    created: dict[str, str] = {}
    for key, upstream in [("extract", []), ("clean", ["extract"]), ("validate", ["extract"]),
                          ("load", ["clean", "validate"])]:
        task = call(
            "task_runs.create_task_run",
            task_run={
                "flow_run_id": flow_run_id,
                "task_key": key,
                "dynamic_key": "0",
                "name": key,
                "task_inputs": {"data": [{"input_type": "task_run", "id": created[u]} for u in upstream]},
                "state": {"type": "PENDING"},
            },
        )
        created[key] = task["id"]
        for state in ("RUNNING", "COMPLETED"):
            result = call("task_runs.set_task_run_state", task_run_id=task["id"], state={"type": state})
            checks.expect(result["status"] == "ACCEPT", f"task run {key} -> {state}: {result['status']}")


def current_type(call: Any, run_id: str) -> str | None:
    run = call("flow_runs.read_flow_run", flow_run_id=run_id)
    return run["state_type"]


def read_slots(call: Any, deployment_id: str) -> dict[str, Any]:
    deployment = call("deployments.read_deployment", deployment_id=deployment_id)
    return deployment["global_concurrency_limit"]


def name_of(ids: list[str], run_id: str) -> str:
    return f"load-{ids.index(run_id) + 1}"


def collapse_repeats(names: list[str]) -> list[str]:
    """`A → B → B → B → C` reads as `A → B ×3 → C`."""
    collapsed: list[str] = []
    count = 0
    for index, name in enumerate(names):
        count += 1
        if index + 1 == len(names) or names[index + 1] != name:
            collapsed.append(f"{name} ×{count}" if count > 1 else name)
            count = 0
    return collapsed


def draw_graph(graph: dict[str, Any]) -> list[str]:
    nodes = {node_id: node for node_id, node in graph["nodes"]}
    lines = []
    for node_id, node in graph["nodes"]:
        parents = [nodes[edge["id"]]["label"] for edge in node["parents"] if edge["id"] in nodes]
        arrow = f"  ← {', '.join(parents)}" if parents else "  (root)"
        lines.append(f"  [{node['state_type'] or '-':9}] {node['label']}{arrow}")
    return lines


def print_summary(summary: dict[str, Any], checks: Checks, sent: int, elapsed: float) -> None:
    say("")
    say(f"{sent} requests through the broker in {elapsed:.1f} s")
    say("final states:")
    for name, (final, history) in summary["finals"].items():
        say(f"  {name:8} {final:10} {' → '.join(collapse_repeats(history))}")
    slots = summary["slots"]
    say(f"deployment slots: {slots['active_slots']} held of {slots['limit']}")
    say(f"graph of {summary['graph_run']}:")
    for line in draw_graph(summary["graph"]):
        say(line)
    if checks.failures:
        say(f"FAILED: {len(checks.failures)} invariant(s) broken")
        for failure in checks.failures:
            say(f"  - {failure}")
    else:
        say("all invariants held: slots never above the limit, no duplicate or out-of-order state, all released")


if __name__ == "__main__":
    sys.exit(run_demo())
