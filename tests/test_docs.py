"""The README and docs/ stay true to the code: every setting is documented, every task of the
contract is in the README's table, and every link points at a file that exists."""

import json
import re
from pathlib import Path

import pytest

from models.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
OPERATIONS = (ROOT / "docs" / "OPERATIONS.md").read_text()
CONTRACT = json.loads((ROOT / "docs" / "contract.json").read_text())


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_documented(field: str) -> None:
    assert f"FLOWRUNS_{field.upper()}" in OPERATIONS


def test_every_contract_task_is_in_the_readme() -> None:
    missing = [name for name in CONTRACT["tasks"] if f"`{name}`" not in README]
    assert not missing


@pytest.mark.parametrize("document", ["README.md", "docs/OPERATIONS.md", "docs/CHAOS.md", "docs/BENCHMARKS.md"])
def test_relative_links_point_at_files(document: str) -> None:
    path = ROOT / document
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", path.read_text()):
        assert (path.parent / target).exists(), f"{document} links to {target}, which does not exist"


def test_the_readme_shows_the_commands_ci_runs() -> None:
    assert "bash run-tests" in README and "flowruns demo" in README
    assert "bash run-tests" in (ROOT / ".ci" / "run").read_text()
