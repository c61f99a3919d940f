"""`tasks/` holds only the worker; the proof and demo tools (bench, chaos, demo, the graph renderer)
live in `flowruns_tools/`, which the worker and its producer client never import."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
TOOLS = ("bench", "cpu_usage", "chaos", "demo", "graph_view")


def test_tasks_holds_no_bench_chaos_or_demo_module() -> None:
    names = {path.stem if path.is_file() else path.name for path in (REPOSITORY / "tasks").iterdir()
             if path.suffix == ".py" or (path / "__init__.py").exists()}
    assert "worker_app" in names and "cli" in names
    assert not [name for name in names if name in TOOLS or any(word in name for word in ("bench", "chaos", "demo"))]
    for name in TOOLS:
        assert (REPOSITORY / "flowruns_tools" / f"{name}.py").exists() or \
            (REPOSITORY / "flowruns_tools" / name / "__init__.py").exists()


@pytest.mark.parametrize("module", ["tasks.producer", "tasks", "tasks.cli"])
def test_the_worker_side_does_not_import_the_tools(module: str) -> None:
    """In a fresh interpreter: `sys.modules` of this process already holds whatever other tests imported."""
    script = (f"import json, sys, {module}\n"
              "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'flowruns_tools')))")
    output = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True,
                            check=True).stdout
    assert json.loads(output.strip().splitlines()[-1]) == []


def test_the_model_layer_never_imports_the_rules() -> None:
    """`models/` holds tables, schemas, queries and statements; `orchestration/` builds on it.
    (The model layer's state changes reach the rules through the `flowruns.transitions` entry point.)"""
    import ast

    importing = []
    for path in sorted((REPOSITORY / "models").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(name == "orchestration" or name.startswith("orchestration.") for name in names):
                importing.append(f"{path.relative_to(REPOSITORY)}:{node.lineno}")
    assert importing == []
    script = ("import sys, models.flow_runs, models.task_runs\n"
              "print(sorted(m for m in sys.modules if m.split('.')[0] == 'orchestration'))")
    output = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True,
                            check=True).stdout
    assert output.strip() == "[]"


def test_the_transition_service_is_found_through_its_entry_point() -> None:
    from models.transitions import transition_service
    from orchestration import service

    assert transition_service() is service


def test_a_producer_imports_without_the_worker_app() -> None:
    """Importing the producer client builds no worker app and changes nothing process-wide: kombu's
    json codec stays kombu's, so the producer's own Celery apps encode as before."""
    script = ("import json, sys, kombu.serialization as s, tasks.producer\n"
              "print(json.dumps(['tasks.worker_app' in sys.modules, s.registry._encoders['json'].encoder.__module__]))")
    output = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True,
                            check=True).stdout
    assert json.loads(output.strip().splitlines()[-1]) == [False, "kombu.utils.json"]


def test_celery_finds_the_app_with_every_task_registered() -> None:
    script = ("import json\nfrom celery.app.utils import find_app\napp = find_app('tasks')\n"
              "print(json.dumps(sorted(name for name in app.tasks if not name.startswith('celery.'))))")
    output = subprocess.run([sys.executable, "-c", script], cwd=REPOSITORY, capture_output=True, text=True,
                            check=True).stdout
    names = json.loads(output.strip().splitlines()[-1])
    assert {"flow_runs.set_flow_run_state", "task_runs.set_task_run_state", "maintenance.mark_late_runs"} <= set(names)
