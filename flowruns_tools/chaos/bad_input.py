"""The bad-input scenario: hypothesis-generated malformed requests through the broker."""

import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flowruns_tools.chaos.checks import ScenarioResult
from flowruns_tools.chaos.producer import Request
from flowruns_tools.chaos.scenarios import Options, World, note_supervisor, table_counts, world
from flowruns_tools.chaos.services import say

BOOL_WORDS = frozenset({"true", "false", "yes", "no", "on", "off", "1", "0", "t", "f", "y", "n"})
SORTS = frozenset({"ID_DESC", "START_TIME_ASC", "START_TIME_DESC", "EXPECTED_START_TIME_ASC",
                   "EXPECTED_START_TIME_DESC", "NAME_ASC", "NAME_DESC", "NEXT_SCHEDULED_START_TIME_ASC",
                   "END_TIME_DESC"})
STATE_TYPES = frozenset({"SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "CRASHED", "PAUSED",
                         "CANCELLING"})
NAME_FORBIDDEN_CHARACTERS = "/%&><"
"""Characters a flow, deployment, work pool or work queue name may not hold (as Prefect refuses them)."""
VALIDATION_ERRORS = frozenset({"ValidationError", "InvalidRequestError"})
NOT_FOUND = frozenset({"ObjectNotFoundError"})
BAD_INPUT_WINDOW = 50
"""Malformed requests outstanding at once."""

Path_ = tuple[str, ...]


@dataclass(frozen=True)
class Template:
    """A valid request on the scenario's own rows; the strategies break exactly one thing in it."""

    name: str
    build: Callable[[dict[str, str]], dict[str, Any]]
    kinds: dict[Path_, str]
    """Field path -> what kind of value it takes (the wrong-type strategies key on it)."""
    required: tuple[Path_, ...] = ()
    closed: tuple[Path_, ...] = ((),)
    """Objects that refuse unknown fields (the kwargs themselves, request bodies)."""


TEMPLATES = [
    Template("flow_runs.set_flow_run_state",
             lambda w: {"flow_run_id": w["run_id"], "state": {"type": "RUNNING", "name": "Running", "message": "m"},
                        "force": False},
             {("flow_run_id",): "uuid", ("state",): "object", ("state", "type"): "state_type",
              ("state", "name"): "text", ("state", "message"): "text", ("force",): "bool"},
             required=(("flow_run_id",), ("state",), ("state", "type")), closed=((), ("state",))),
    Template("flow_runs.create_flow_run",
             lambda w: {"flow_run": {"flow_id": w["flow_id"], "name": "bad", "tags": ["a"], "parameters": {"x": 1},
                                     "state": {"type": "SCHEDULED"}}},
             {("flow_run",): "object", ("flow_run", "flow_id"): "uuid", ("flow_run", "name"): "text",
              ("flow_run", "tags"): "text_list", ("flow_run", "parameters"): "object",
              ("flow_run", "state"): "object", ("flow_run", "state", "type"): "state_type"},
             required=(("flow_run",), ("flow_run", "flow_id")), closed=((), ("flow_run",), ("flow_run", "state"))),
    Template("flow_runs.update_flow_run",
             lambda w: {"flow_run_id": w["run_id"], "flow_run": {"name": "renamed", "tags": ["b"]}},
             {("flow_run_id",): "uuid", ("flow_run",): "object", ("flow_run", "name"): "text",
              ("flow_run", "tags"): "text_list"},
             required=(("flow_run_id",), ("flow_run",)), closed=((), ("flow_run",))),
    Template("flow_runs.read_flow_run", lambda w: {"flow_run_id": w["run_id"]}, {("flow_run_id",): "uuid"},
             required=(("flow_run_id",),)),
    Template("flow_runs.read_flow_runs",
             lambda w: {"limit": 10, "offset": 0, "sort": "ID_DESC", "flow_run_filter": {"tags": {"all_": ["a"]}}},
             {("limit",): "page_limit", ("offset",): "offset", ("sort",): "sort", ("flow_run_filter",): "object",
              ("flow_run_filter", "tags", "all_"): "text_list"},
             closed=((), ("flow_run_filter",), ("flow_run_filter", "tags"))),
    Template("flow_runs.count_flow_runs", lambda w: {"flow_run_filter": {"tags": {"all_": ["a"]}}},
             {("flow_run_filter",): "object", ("flow_run_filter", "tags", "all_"): "text_list"},
             closed=((), ("flow_run_filter",))),
    Template("flow_runs.read_flow_run_graph",
             lambda w: {"flow_run_id": w["run_id"], "since": "2020-01-01T00:00:00+00:00"},
             {("flow_run_id",): "uuid", ("since",): "timestamp"}, required=(("flow_run_id",),)),
    Template("flow_run_states.read_flow_run_states", lambda w: {"flow_run_id": w["run_id"]},
             {("flow_run_id",): "uuid"}, required=(("flow_run_id",),)),
    Template("flows.create_flow", lambda w: {"flow": {"name": "chaos-bad", "tags": ["t"]}},
             {("flow",): "object", ("flow", "name"): "name", ("flow", "tags"): "text_list"},
             required=(("flow",), ("flow", "name")), closed=((), ("flow",))),
    Template("deployments.create_deployment",
             lambda w: {"deployment": {"name": "bad", "flow_id": w["flow_id"], "concurrency_limit": 2,
                                       "concurrency_options": {"collision_strategy": "ENQUEUE"}}},
             {("deployment",): "object", ("deployment", "name"): "name", ("deployment", "flow_id"): "uuid",
              ("deployment", "concurrency_limit"): "positive_int",
              ("deployment", "concurrency_options", "collision_strategy"): "strategy"},
             required=(("deployment",), ("deployment", "name"), ("deployment", "flow_id")),
             closed=((), ("deployment",))),
    Template("deployments.read_deployment", lambda w: {"deployment_id": w["deployment_id"]},
             {("deployment_id",): "uuid"}, required=(("deployment_id",),)),
    Template("task_runs.create_task_run",
             lambda w: {"task_run": {"flow_run_id": w["run_id"], "task_key": "k", "dynamic_key": "bad", "name": "t"}},
             {("task_run",): "object", ("task_run", "flow_run_id"): "uuid", ("task_run", "task_key"): "text",
              ("task_run", "dynamic_key"): "text"},
             required=(("task_run",), ("task_run", "task_key"), ("task_run", "dynamic_key")),
             closed=((), ("task_run",))),
    Template("task_runs.set_task_run_state",
             lambda w: {"task_run_id": w["task_run_id"], "state": {"type": "RUNNING"}, "force": False},
             {("task_run_id",): "uuid", ("state",): "object", ("state", "type"): "state_type", ("force",): "bool"},
             required=(("task_run_id",), ("state",), ("state", "type")), closed=((), ("state",))),
    Template("work_queues.create_work_queue",
             lambda w: {"work_queue": {"name": "q-bad", "work_pool_name": w["pool_name"], "priority": 1}},
             {("work_queue",): "object", ("work_queue", "name"): "name",
              ("work_queue", "priority"): "positive_int"},
             required=(("work_queue",), ("work_queue", "name")), closed=((), ("work_queue",))),
    Template("work_pools.create_work_pool", lambda w: {"work_pool": {"name": "p-bad", "type": "process"}},
             {("work_pool",): "object", ("work_pool", "name"): "pool_name", ("work_pool", "type"): "text"},
             required=(("work_pool",), ("work_pool", "name")), closed=((), ("work_pool",))),
]


@dataclass(frozen=True)
class BadRequest:
    name: str
    kwargs: dict[str, Any]
    category: str
    expected: frozenset[str]
    names: tuple[str, ...]
    """The message must contain one of these (the offending field, or the missing object)."""


def bad_requests(world_ids: dict[str, str]) -> Any:
    """A hypothesis strategy of malformed requests, one defect each: a wrong type, an unknown field, an
    unknown state type, a missing required field (ValidationError), or an unknown id (ObjectNotFoundError).

    Values stay within what JSON and PostgreSQL carry (no NUL character, integers within 32 bits): those
    are the subject of `hostile_requests` and of tests that document them separately.
    """
    from hypothesis import strategies as st

    text = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Nd")), min_size=1, max_size=24)
    name_text = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Nd"),
                                      blacklist_characters=NAME_FORBIDDEN_CHARACTERS), min_size=1, max_size=24)
    with_forbidden_character = st.builds(lambda head, character, tail: head + character + tail,
                                         name_text, st.sampled_from(NAME_FORBIDDEN_CHARACTERS), name_text)
    small = st.one_of(st.integers(-1000, 1000), text, st.booleans())
    truthy_non_text = st.one_of(st.integers(1, 2**31 - 1), st.floats(0.5, 1e6), st.just(True),
                                st.lists(small, min_size=1, max_size=3),
                                st.dictionaries(text, small, min_size=1, max_size=3))
    not_uuid = text.filter(lambda s: not _parses_as_uuid(s))
    wrong = {
        "uuid": st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                          st.lists(small, max_size=3), st.dictionaries(text, small, max_size=3), not_uuid),
        "text": truthy_non_text,
        "name": st.one_of(truthy_non_text, st.just(""), with_forbidden_character),
        "pool_name": st.one_of(truthy_non_text, st.just(""), with_forbidden_character,
                               st.sampled_from(["  ", "''", '" "', "prefect", "Prefect-pool", "PREFECT managed"]),
                               name_text.map(lambda tail: "prefect" + tail)),
        "bool": st.one_of(st.lists(small, max_size=3), st.dictionaries(text, small, max_size=3),
                          text.filter(lambda s: s.strip().lower() not in BOOL_WORDS),
                          st.integers().filter(lambda n: n not in (0, 1)), st.floats(1.5, 1e6)),
        "text_list": st.one_of(text, st.integers(), st.dictionaries(text, small, min_size=1, max_size=3),
                               st.lists(st.integers(), min_size=1, max_size=3)),
        "object": st.one_of(text, st.integers(), st.booleans(), st.lists(small, max_size=3),
                            st.floats(allow_nan=False, allow_infinity=False)),
        "state_type": st.one_of(st.sampled_from(["LATE", "running", "Running", "SUCCESS", "RETRYING", "DONE"]),
                                text.filter(lambda s: s not in STATE_TYPES), st.integers(), st.lists(small, max_size=2)),
        "positive_int": st.one_of(st.integers(-2**31, 0), text, st.floats(0.1, 0.9), st.lists(small, max_size=2)),
        "page_limit": st.one_of(st.integers(201, 2**31 - 1), st.integers(-2**31, -1), text, st.floats(0.1, 0.9)),
        "offset": st.one_of(st.integers(-2**31, -1), text, st.lists(small, max_size=2)),
        "sort": st.one_of(text.filter(lambda s: s not in SORTS), st.integers()),
        "strategy": st.one_of(text.filter(lambda s: s not in ("ENQUEUE", "CANCEL_NEW")), st.integers()),
        "timestamp": st.one_of(text, st.lists(small, max_size=2),
                               st.datetimes().map(lambda d: d.isoformat())),  # naive: no UTC offset
    }
    field_name = st.from_regex(r"[a-z][a-z_]{2,14}", fullmatch=True)
    templates = st.sampled_from(TEMPLATES)

    @st.composite
    def wrong_type(draw: Any) -> BadRequest:
        template = draw(templates)
        path = draw(st.sampled_from(sorted(template.kinds)))
        kwargs = template.build(world_ids)
        _put(kwargs, path, draw(wrong[template.kinds[path]]))
        return BadRequest(template.name, kwargs, "wrong type", VALIDATION_ERRORS, (path[-1],))

    @st.composite
    def unknown_field(draw: Any) -> BadRequest:
        template = draw(templates)
        path = draw(st.sampled_from(template.closed))
        kwargs = template.build(world_ids)
        known = _known_fields(template, path, kwargs)
        key = draw(field_name.filter(lambda k: k not in known))
        target = _get(kwargs, path)
        target[key] = draw(small)
        return BadRequest(template.name, kwargs, "unknown field", VALIDATION_ERRORS, (key,))

    @st.composite
    def unknown_state_type(draw: Any) -> BadRequest:
        template = draw(st.sampled_from([t for t in TEMPLATES if "state_type" in t.kinds.values()]))
        path = next(p for p, kind in template.kinds.items() if kind == "state_type")
        kwargs = template.build(world_ids)
        _put(kwargs, path, draw(wrong["state_type"]))
        return BadRequest(template.name, kwargs, "unknown state type", VALIDATION_ERRORS, ("type",))

    @st.composite
    def missing_field(draw: Any) -> BadRequest:
        template = draw(st.sampled_from([t for t in TEMPLATES if t.required]))
        path = draw(st.sampled_from(template.required))
        kwargs = template.build(world_ids)
        del _get(kwargs, path[:-1])[path[-1]]
        return BadRequest(template.name, kwargs, "missing field", VALIDATION_ERRORS, (path[-1],))

    @st.composite
    def unknown_id(draw: Any) -> BadRequest:
        missing = str(draw(st.uuids()))
        name = "missing-" + draw(name_text)
        state_type = draw(st.sampled_from(sorted(STATE_TYPES)))
        cases = [
            ("flow_runs.read_flow_run", {"flow_run_id": missing}, missing),
            ("flow_runs.set_flow_run_state", {"flow_run_id": missing, "state": {"type": state_type}}, missing),
            ("flow_runs.read_task_run_dependencies", {"flow_run_id": missing}, missing),
            ("flow_runs.read_flow_run_graph", {"flow_run_id": missing}, missing),
            ("flow_run_states.read_flow_run_states", {"flow_run_id": missing}, missing),
            ("flow_runs.create_flow_run", {"flow_run": {"flow_id": missing}}, "flow_id"),
            ("flow_runs.create_flow_run", {"flow_run": {"flow_id": world_ids["flow_id"], "deployment_id": missing}},
             "deployment_id"),
            ("flow_runs.create_flow_run", {"flow_run": {"flow_id": world_ids["flow_id"], "work_queue_name": name}},
             "work_queue_name"),
            ("flow_runs.create_flow_run", {"flow_run": {"flow_id": world_ids["flow_id"], "work_pool_name": name}},
             "work_pool_name"),
            ("deployments.read_deployment", {"deployment_id": missing}, missing),
            ("deployments.create_deployment", {"deployment": {"name": name, "flow_id": missing}}, "flow_id"),
            ("work_queues.create_work_queue", {"work_queue": {"name": name, "work_pool_name": name}},
             "work_pool_name"),
            ("task_runs.create_task_run", {"task_run": {"flow_run_id": missing, "task_key": "k", "dynamic_key": "0"}},
             "flow_run_id"),
            ("task_runs.set_task_run_state", {"task_run_id": missing, "state": {"type": state_type}}, missing),
        ]
        task, kwargs, names = draw(st.sampled_from(cases))
        return BadRequest(task, kwargs, "unknown id", NOT_FOUND, (names,))

    return st.one_of(wrong_type(), unknown_field(), unknown_state_type(), missing_field(), unknown_id())


def _parses_as_uuid(value: str) -> bool:
    try:
        uuid.UUID(value.strip())
    except ValueError:
        return False
    return True


def _get(value: Any, path: Path_) -> Any:
    for part in path:
        value = value[part]
    return value


def _put(kwargs: dict[str, Any], path: Path_, value: Any) -> None:
    target = kwargs
    for part in path[:-1]:
        target = target.setdefault(part, {})
    target[path[-1]] = value


def _known_fields(template: Template, path: Path_, kwargs: dict[str, Any]) -> set[str]:
    """Names the object at `path` accepts (from the request schemas' declarations), so that an added
    field is unknown for sure."""
    known = set(_get(kwargs, path)) | {p[len(path)] for p in template.kinds if len(p) > len(path)}
    for model in _schema_models(template.name, path):
        known |= set(model.model_fields)
    return known


def _schema_models(name: str, path: Path_) -> list[Any]:
    import tasks  # the task registry: each task's request body schema

    task = tasks.app.tasks.get(name)
    model = getattr(getattr(task, "spec", None), "body", None)
    models = []
    for part in path:
        if model is None:
            break
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        model = _model_in(annotation)
    if model is not None:
        models.append(model)
    return models


def _model_in(annotation: Any) -> Any:
    import typing

    import pydantic

    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        if (found := _model_in(argument)) is not None:
            return found
    return None


def generate(strategy: Any, count: int, seed: int) -> list[Any]:
    """`count` examples of a hypothesis strategy, reproducible from `seed`."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    examples: list[Any] = []

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example: Any) -> None:
        examples.append(example)

    collect()
    return examples


def bad_input(options: Options) -> ScenarioResult:
    """Thousands of generated malformed requests through the broker: each fails at once with the
    contract's error class (as the result backend carries it), none is retried, nothing is written."""
    result = ScenarioResult("bad-input")
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        result.skipped = "hypothesis is not installed (pip install 'flowruns[dev]')"
        return result
    with world(options, "bad-input") as scenario:
        scenario.start_worker()
        world_ids = _bad_input_world(scenario)
        say(f"  [{scenario.name}] generating {options.size.bad_bodies} malformed requests ...")
        bodies = generate(bad_requests(world_ids), options.size.bad_bodies, options.seed)
        before = table_counts(scenario.database_url)
        started = time.monotonic()
        sent = _send_windowed(scenario, bodies, started + options.size.deadline_seconds)
        finished = all(request.meta is not None for _b, request in sent)
        elapsed = time.monotonic() - started
        if not finished:
            result.error(f"not every request got its result within {options.size.deadline_seconds:.0f}s")
        after = table_counts(scenario.database_url)
        note_supervisor(result, scenario)
        scenario.worker.stop()
        log = scenario.worker.log_text()
        result.requests = len(sent)
        result.messages = sum(request.sends for _b, request in sent)
        for body, request in sent:
            if _refused_as_contracted(result, body, request):
                result.applied += 1
        if after != before:
            changed = {table: (before[table], after[table]) for table in before if before[table] != after[table]}
            result.error(f"the database changed: {changed}")
        if (retries := len(re.findall(r"lost a connection|Retry in", log))) > 0:
            result.error(f"{retries} retries in the worker log")
        latencies = sorted(request.latency or 0.0 for _b, request in sent)
        result.notes.update({
            "categories": dict(Counter(body.category for body in bodies)),
            "tasks": len({body.name for body in bodies}),
            "seconds_for_all": round(elapsed, 1),
            "latency_p50_ms": round(1000 * _quantile(latencies, 0.5), 1),
            "latency_max_ms": round(1000 * _quantile(latencies, 1.0), 1),
        })
    return result


def _send_windowed(scenario: World, bodies: list[BadRequest], deadline: float) -> list[tuple[BadRequest, Request]]:
    """At most BAD_INPUT_WINDOW outstanding, so a latency is the refusal's, not a long queue's."""
    waiting = list(reversed(bodies))
    sent: list[tuple[BadRequest, Request]] = []
    outstanding = [0]

    def done(_request: Request) -> None:
        outstanding[0] -= 1

    def refill() -> None:
        scenario.tick()
        while waiting and outstanding[0] < BAD_INPUT_WINDOW:
            body = waiting.pop()
            outstanding[0] += 1
            sent.append((body, scenario.driver.submit(body.name, body.kwargs, on_done=done)))

    refill()
    scenario.driver.run_until(lambda: not waiting and outstanding[0] == 0, deadline, refill)
    return sent


def _bad_input_world(scenario: World) -> dict[str, str]:
    """A flow, a deployment, a run, a task run and a work pool: only the broken part of a request is wrong."""
    call = scenario.driver.call
    flow = call("flows.create_flow", {"flow": {"name": "chaos-bad-input"}})
    deployment = call("deployments.create_deployment", {"deployment": {"name": "d", "flow_id": flow["id"]}})
    run = call("flow_runs.create_flow_run", {"flow_run": {"flow_id": flow["id"]}})
    task_run = call("task_runs.create_task_run", {"task_run": {"flow_run_id": run["id"], "task_key": "k",
                                                              "dynamic_key": "0"}})
    pool = call("work_pools.create_work_pool", {"work_pool": {"name": "chaos-pool", "type": "process"}})
    return {"flow_id": flow["id"], "deployment_id": deployment["id"], "run_id": run["id"],
            "task_run_id": task_run["id"], "pool_name": pool["name"]}


def _refused_as_contracted(result: ScenarioResult, body: BadRequest, request: Request) -> bool:
    label = f"{body.category}: {body.name}({json.dumps(body.kwargs)[:300]})"
    meta = request.meta
    if meta is None:
        result.lost += 1
        result.error(f"{label}: no result")
        return False
    if meta.get("status") != "FAILURE":
        result.error(f"{label}: {meta.get('status')} {str(meta.get('result'))[:200]}")
        return False
    failure = meta.get("result") or {}
    message = " ".join(str(part) for part in failure.get("exc_message") or [])
    if failure.get("exc_type") not in body.expected:
        result.error(f"{label}: expected {'/'.join(sorted(body.expected))}, got {failure.get('exc_type')}: "
                     f"{message[:200]}")
        return False
    if meta.get("retries") != 0:
        result.error(f"{label}: retried {meta.get('retries')} times")
        return False
    if not any(name in message for name in body.names):
        result.error(f"{label}: the message does not name {body.names[0]!r}: {message[:200]}")
        return False
    return True


def _quantile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]
