"""`flowruns demo` runs end to end on embedded defaults and its invariants hold."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_runs_the_workload_and_reports_every_invariant_held(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("FLOWRUNS_")}
    completed = subprocess.run(
        [sys.executable, "-c", "from tasks.cli import main; main()", "demo", "--database", str(tmp_path / "demo.db")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    output = completed.stdout
    assert "all invariants held" in output
    assert "deployment slots: 0 held of 2" in output
    assert "AwaitingRetry" in output and "Cancelled" in output and "deleted" in output
    assert "load  ← clean, validate" in output
