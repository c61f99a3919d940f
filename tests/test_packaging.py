"""What a user installing flowruns gets: a version, a licence, type information, honest bounds."""

import subprocess
import sys
import tomllib
from importlib.metadata import version

from tests.celery_support import REPOSITORY

PYPROJECT = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())


def test_the_command_reports_the_installed_version() -> None:
    output = subprocess.run([sys.executable, "-m", "tasks.cli", "--version"], cwd=REPOSITORY,
                            capture_output=True, text=True, check=True).stdout
    assert output.strip() == f"flowruns, version {version('flowruns')}" == f"flowruns, version {PYPROJECT['project']['version']}"


def test_licence_changelog_and_type_markers_ship() -> None:
    assert "Apache License" in (REPOSITORY / "LICENSE").read_text() and PYPROJECT["project"]["license"] == "Apache-2.0"
    assert "## [Unreleased]" in (REPOSITORY / "CHANGELOG.md").read_text()
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    for package in ("models", "orchestration", "tasks", "flowruns_tools"):
        assert (REPOSITORY / package / "py.typed").exists()
        assert "py.typed" in package_data[package]


def test_dependency_bounds_cover_the_features_used() -> None:
    """Celery's soft shutdown (worker_soft_shutdown_timeout) arrived in 5.5."""
    dependencies = PYPROJECT["project"]["dependencies"]
    assert "celery[redis]>=5.5,<6" in dependencies
