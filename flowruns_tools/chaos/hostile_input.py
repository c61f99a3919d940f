"""The hostile-input scenario: bodies built to take a worker down, mixed into a normal batch.

The catalogue holds the hand-picked bodies (each hostile body the issue reported, with the start of
the refusal it must get) and a hypothesis strategy of generated ones (deep, wide or long values in
the free-form fields and filter lists, each over one of the door's limits; in `parameters`, which
the door bounds by depth only, wide and long values are over the parameter size bound instead). The
scenario drives the ordinary lifecycle batch while it sends them; afterwards every ordinary request
must have taken effect exactly once (the usual checks: a hostile create or transition that slipped
through would show as a run or state no request accounts for), every hostile one must have failed
at once as a `ValidationError` without a retry, and the worker must still be the processes it
started as.
"""

import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowruns_tools.chaos.bad_input import generate
from flowruns_tools.chaos.checks import ScenarioResult
from flowruns_tools.chaos.producer import Request
from flowruns_tools.chaos.scenarios import Options, World, _lifecycles, run_batch, world
from flowruns_tools.chaos.services import say

Ids = dict[str, str]
"""`flow_id` and `run_id` of ordinary rows, so that only the hostile part of a body is wrong."""


@dataclass(frozen=True)
class HostileBody:
    label: str
    name: str
    kwargs_json: Callable[[Ids], str]
    refusal: str
    """How the refusal's message starts ("" when any ValidationError will do)."""


def nested_json(depth: int, opener: str = "[") -> str:
    """JSON text `depth` containers deep (built as text: no encoder would write the deepest)."""
    if opener == "[":
        return "[" * depth + "[]" + "]" * depth
    return '{"k":' * depth + "[]" + "}" * depth


def _ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


HAND_PICKED: list[HostileBody] = [
    HostileBody("parameters nested 900 deep", "flow_runs.create_flow_run",
                lambda w: '{"flow_run": {"flow_id": "%s", "parameters": {"x": %s}}}' % (w["flow_id"], nested_json(900)),
                "flow_run.parameters.x.0.0.0.0.0... (24 levels more): nested more than 32 levels deep"),
    HostileBody("parameters nested 100,000 deep", "flow_runs.create_flow_run",
                lambda w: '{"flow_run": {"flow_id": "%s", "parameters": {"x": %s}}}' % (w["flow_id"], nested_json(100_000)),
                "body: nested too deep to decode (the limit is 32 levels, FLOWRUNS_MAX_MESSAGE_DEPTH)"),
    HostileBody("labels nested 500 deep", "flow_runs.create_flow_run",
                lambda w: '{"flow_run": {"flow_id": "%s", "labels": %s}}' % (w["flow_id"], nested_json(500, "{")),
                "flow_run.labels.k.k.k.k.k.k... (24 levels more): nested more than 32 levels deep"),
    HostileBody("a name of 2 MB", "flow_runs.create_flow_run",
                lambda w: json.dumps({"flow_run": {"flow_id": w["flow_id"], "name": "x" * 2_000_000}}),
                "flow_run.name: a string of 2000000 characters, over the limit of 100000 (FLOWRUNS_MAX_STRING_LENGTH)"),
    HostileBody("a name of 20 MB", "flow_runs.create_flow_run",
                lambda w: json.dumps({"flow_run": {"flow_id": w["flow_id"], "name": "x" * 20_000_000}}),
                "flow_run.name: the message is 2000"),
    HostileBody("a filter of 100,000 ids", "flow_runs.read_flow_runs",
                lambda w: json.dumps({"flow_run_filter": {"id": {"any_": _ids(100_000)}}}),
                "flow_run_filter.id.any_: the message is"),
    HostileBody("50,000 tags in all_", "flow_runs.count_flow_runs",
                lambda w: json.dumps({"flow_run_filter": {"tags": {"all_": [f"t{i}" for i in range(50_000)]}}}),
                "flow_run_filter.tags.all_: 50000 items, over the limit of 10000 (FLOWRUNS_MAX_LIST_LENGTH)"),
    HostileBody("an offset of 10^18", "flow_runs.read_flow_runs", lambda w: json.dumps({"offset": 10**18}),
                "offset: Value error, must be at most 100000"),
    HostileBody("a state name of 1 MB", "flow_runs.set_flow_run_state",
                lambda w: json.dumps({"flow_run_id": w["run_id"], "state": {"type": "RUNNING", "name": "s" * 1_000_000}}),
                "state.name: a string of 1000000 characters, over the limit of 100000 (FLOWRUNS_MAX_STRING_LENGTH)"),
    HostileBody("100,000 labels", "flow_runs.create_flow_run",
                lambda w: json.dumps({"flow_run": {"flow_id": w["flow_id"], "labels": {f"k{i}": i for i in range(100_000)}}}),
                "flow_run.labels: 100000 keys, over the limit of 10000 (FLOWRUNS_MAX_OBJECT_KEYS)"),
    HostileBody("parameters of 600 KB", "flow_runs.create_flow_run",
                lambda w: json.dumps({"flow_run": {"flow_id": w["flow_id"], "parameters": {"x": "p" * 600_000}}}),
                "flow_run.parameters: Value error, 600008 bytes as compact JSON, over the limit of 524288 bytes"),
    HostileBody("parameters of 3 MB", "flow_runs.create_flow_run",
                lambda w: json.dumps({"flow_run": {"flow_id": w["flow_id"], "parameters": {"x": "p" * 3_000_000}}}),
                "flow_run.parameters.x: the message is 3000"),
    HostileBody("a body that is not JSON", "flow_runs.count_flow_runs", lambda w: '{"flow_run_filter": ',
                "body: cannot be decoded as JSON"),
    HostileBody("a body of the wrong shape", "flow_runs.count_flow_runs", lambda w: '"kwargs"',
                "kwargs: must be an object"),
    HostileBody("a Celery built-in task, nested deep", "celery.backend_cleanup",
                lambda w: '{"x": %s}' % nested_json(900), "x.0.0.0.0.0.0.0... ("),
]

GENERATED_FIELDS: dict[str, tuple[str, Callable[[Ids, str], str]]] = {
    "parameters": ("flow_runs.create_flow_run",
                   lambda w, value: '{"flow_run": {"flow_id": "%s", "parameters": {"p": %s}}}' % (w["flow_id"], value)),
    "state data": ("flow_runs.set_flow_run_state",
                   lambda w, value: '{"flow_run_id": "%s", "state": {"type": "RUNNING", "data": %s}}' % (w["run_id"], value)),
    "a filter list": ("flow_runs.read_flow_runs", lambda w, value: '{"flow_run_filter": {"id": {"any_": %s}}}' % value),
    "context": ("flow_runs.create_flow_run",
                lambda w, value: '{"flow_run": {"flow_id": "%s", "context": {"c": %s}}}' % (w["flow_id"], value)),
    "labels": ("flow_runs.create_flow_run",
               lambda w, value: '{"flow_run": {"flow_id": "%s", "labels": {"l": %s}}}' % (w["flow_id"], value)),
}


def hostile_value(shape: str, size: int) -> str:
    """JSON text over one of the door's limits with the default settings."""
    if shape == "deep lists":
        return nested_json(size)
    if shape == "deep objects":
        return nested_json(size, "{")
    if shape == "wide list":
        return "[" + ",".join("1" for _ in range(size)) + "]"
    if shape == "wide object":
        return "{" + ",".join(f'"k{index}": 1' for index in range(size)) + "}"
    return json.dumps("s" * size)


PARAMETER_SIZES = {"wide list": (262_200, 400_000), "wide object": (50_000, 80_000), "long string": (524_300, 900_000)}
"""Sizes of wide and long values in `parameters` whose compact JSON is over 524,288 bytes (refused by
validation), while the message stays under the door's 2 MiB (`FLOWRUNS_MAX_MESSAGE_BYTES`)."""
DOOR_SIZES = {"wide list": (10_001, 60_000), "wide object": (10_001, 60_000), "long string": (100_001, 900_000)}
"""Sizes of wide and long values over the door's list, key and string limits (elsewhere)."""


def generated_bodies() -> Any:
    """A hypothesis strategy of hostile bodies: a deep, wide or long value in a free-form field or list."""
    from hypothesis import strategies as st

    def body(field: str, shape_and_size: tuple[str, int]) -> HostileBody:
        shape, size = shape_and_size
        name, build = GENERATED_FIELDS[field]
        value = hostile_value(shape, size)
        return HostileBody(f"{shape} ({size}) in {field}", name, lambda w: build(w, value), "")

    def shapes(field: str) -> Any:
        sizes = PARAMETER_SIZES if field == "parameters" else DOOR_SIZES
        return st.one_of(
            st.tuples(st.sampled_from(["deep lists", "deep objects"]), st.integers(min_value=33, max_value=20_000)),
            *(st.tuples(st.just(shape), st.integers(*sizes[shape])) for shape in sorted(sizes)),
        )

    fields = st.sampled_from(sorted(GENERATED_FIELDS))
    return fields.flatmap(lambda field: shapes(field).map(lambda shape_and_size: body(field, shape_and_size)))


GENERATED = {"full": 120, "short": 24}
"""Generated hostile bodies per run, besides the hand-picked ones (each of those is sent twice)."""
CHECK_EVERY_SECONDS = 0.05
"""How often the batch's progress is looked at for hostile bodies that are due."""


def hostile_input(options: Options) -> ScenarioResult:
    """The lifecycle batch with hostile bodies mixed in; see the module docstring for the verdict."""
    result = ScenarioResult("hostile-input")
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        result.skipped = "hypothesis is not installed (pip install 'flowruns[dev]')"
        return result
    mode = "short" if options.short else "full"
    rng = random.Random(options.seed + 5)
    bodies = HAND_PICKED * 2 + generate(generated_bodies(), GENERATED[mode], options.seed)
    rng.shuffle(bodies)
    with world(options, "hostile-input") as scenario:
        scenario.start_worker()
        processes = (scenario.worker.pid, scenario.worker.children())
        workload = _lifecycles(options, scenario, rng)
        sent: list[tuple[HostileBody, Request]] = []

        # Each body goes out when the batch has come that far, so they land among ordinary requests.
        planned = sorted(((rng.uniform(0.02, 0.9), index) for index in range(len(bodies))), reverse=True)

        def send_due() -> None:
            run_ids = [track.run_id for track in workload.tracks if track.run_id is not None]
            while planned and planned[-1][0] <= workload.progress():
                body = bodies[planned.pop()[1]]
                ids = {"flow_id": workload.flow_id, "run_id": rng.choice(run_ids) if run_ids else str(uuid.uuid4())}
                sent.append((body, scenario.driver.submit_raw(body.name, body.kwargs_json(ids))))
            if planned:
                scenario.driver.later(CHECK_EVERY_SECONDS, send_due)

        scenario.driver.later(0.0, send_due)
        say(f"  [{scenario.name}] {len(bodies)} hostile bodies go out between 2 % and 90 % of the batch")
        run_batch(scenario, workload, [], result, options.size.deadline_seconds, keep_worker=True)
        deadline = time.monotonic() + 120
        answered = scenario.driver.run_until(
            lambda: len(sent) == len(bodies) and all(request.meta is not None for _b, request in sent),
            deadline, scenario.tick)
        if not answered:
            result.error(f"hostile bodies without an answer: {sum(1 for _b, r in sent if r.meta is None)} "
                         f"of {len(sent)} sent ({len(bodies)} planned)")
        _check_the_worker_survived(result, scenario, processes)
        scenario.worker.stop()
        refused = sum(1 for body, request in sent if _refused_at_once(result, body, request))
        latencies = sorted(request.latency or 0.0 for _b, request in sent)
        result.notes.update({
            "hostile_sent": len(sent),
            "hostile_refused": refused,
            "hostile_latency_max_ms": round(1000 * latencies[-1], 1) if latencies else None,
        })
        if refused != len(bodies):
            result.error(f"{refused} of {len(bodies)} hostile bodies refused as they must be")
    return result


def _check_the_worker_survived(result: ScenarioResult, scenario: World, processes: tuple[int, list[int]]) -> None:
    if scenario.supervisor_events:
        result.error(f"the worker died: {scenario.supervisor_events}")
    now = (scenario.worker.pid, scenario.worker.children()) if scenario.worker.alive() else None
    if now != processes:
        result.error(f"worker processes changed: main and pool were {processes}, now {now}")


def _refused_at_once(result: ScenarioResult, body: HostileBody, request: Request) -> bool:
    meta = request.meta
    label = f"hostile {body.label}: {body.name}"
    if meta is None:
        return False
    failure = meta.get("result") or {}
    message = " ".join(str(part) for part in failure.get("exc_message") or [])
    if meta.get("status") != "FAILURE" or failure.get("exc_type") != "ValidationError":
        result.error(f"{label}: {meta.get('status')} {failure.get('exc_type')}: {message[:200]}")
        return False
    if meta.get("retries"):
        result.error(f"{label}: retried {meta.get('retries')} times")
        return False
    if not message.startswith(body.refusal):
        result.error(f"{label}: refused with {message[:200]!r}, not {body.refusal!r}")
        return False
    return True
