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
    assert "app" in names and "cli" in names
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
