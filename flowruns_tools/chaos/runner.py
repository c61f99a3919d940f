"""`flowruns chaos`: run the scenarios one after another, print the table (or JSON), exit status."""

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flowruns_tools.chaos.bad_input import bad_input
from flowruns_tools.chaos.checks import ScenarioResult
from flowruns_tools.chaos.hostile_input import hostile_input
from flowruns_tools.chaos.partition import partition
from flowruns_tools.chaos.poison_message import poison_message
from flowruns_tools.chaos.scenarios import Options, broker_restart, duplicate_delivery, postgres_restart, worker_sigkill
from flowruns_tools.chaos.services import ChaosSetupError, say

SCENARIOS: dict[str, Callable[[Options], ScenarioResult]] = {
    "worker-sigkill": worker_sigkill,
    "postgres-restart": postgres_restart,
    "broker-restart": broker_restart,
    "partition": partition,
    "duplicate-delivery": duplicate_delivery,
    "bad-input": bad_input,
    "hostile-input": hostile_input,
    "poison-message": poison_message,
}


def run_scenario(name: str, options: Options) -> ScenarioResult:
    """One scenario; a set-up failure or crash is a FAIL with its reason, never an exception."""
    started = time.monotonic()
    try:
        result = SCENARIOS[name](options)
    except ChaosSetupError as error:
        result = ScenarioResult(name)
        result.error(f"set-up: {error}")
    except Exception as error:  # noqa: BLE001 - a crash is this scenario's verdict, the others still run
        import traceback

        result = ScenarioResult(name)
        result.error(f"crashed: {type(error).__name__}: {error}\n{traceback.format_exc()[-3000:]}")
    result.seconds = round(time.monotonic() - started, 1)
    result.broker = options.broker
    return result


def run_chaos(options: Options, names: list[str], as_json: bool, brokers: tuple[str, ...] = ("redis",)) -> int:
    """Run the scenarios one after another, on each broker; print the table (or JSON); 0 only if every
    one passed."""
    keep = options.log_dir is not None
    options.log_dir = options.log_dir or Path(tempfile.mkdtemp(prefix="flowruns-chaos-logs-"))
    say(f"flowruns chaos ({'short' if options.short else 'full'}), seed {options.seed}: {', '.join(names)}; "
        f"worker logs in {options.log_dir}")
    started = time.monotonic()
    results = []
    for broker in brokers:
        options.broker = broker
        for name in names:
            say(f"== {name} ({broker})")
            result = run_scenario(name, options)
            say(f"== {name} ({broker}): {result.verdict} in {result.seconds:.1f}s")
            results.append(result)
    elapsed = time.monotonic() - started
    passed = all(result.passed for result in results)
    if as_json:
        print(json.dumps({"mode": "short" if options.short else "full", "seed": options.seed,
                          "seconds": round(elapsed, 1), "passed": passed,
                          "scenarios": [result.as_dict() for result in results]}, indent=2, default=str))
    else:
        print(format_table(results, options, elapsed))
    if passed and not keep:
        shutil.rmtree(options.log_dir, ignore_errors=True)
    elif not passed:
        say(f"worker logs kept in {options.log_dir}")
    return 0 if passed else 1


def format_table(results: list[ScenarioResult], options: Options, elapsed: float) -> str:
    header = ("scenario", "broker", "requests", "messages", "applied", "lost", "duplicated", "slot drift", "over limit",
              "time", "verdict")
    rows = [(r.name, r.broker, str(r.requests), str(r.messages), str(r.applied), str(r.lost), str(r.duplicated),
             f"{r.slot_drift} ({r.slot_samples} reads)" if r.slot_samples else str(r.slot_drift),
             str(r.over_limit), f"{r.seconds:.0f}s", r.verdict) for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    out = [f"\nflowruns chaos — {'short' if options.short else 'full'}, seed {options.seed}, "
           f"{elapsed / 60:.1f} min", line(header), line(tuple("-" * w for w in widths))]
    out += [line(row) for row in rows]
    for result in results:
        out.append(f"\n{result.name} ({result.broker}):")
        if result.skipped:
            out.append(f"  skipped: {result.skipped}")
        out += [f"  fault: {fault}" for fault in result.faults]
        out += [f"  !! worker crash: {crash}" for crash in result.crashes]
        if result.notes:
            out.append("  " + ", ".join(f"{key.replace('_', ' ')} {value}" for key, value in result.notes.items()))
        out += [f"  !! {error}" for error in result.errors[:20]]
    return "\n".join(out)
