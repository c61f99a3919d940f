"""The migrations build exactly the schema the models declare, and roll back cleanly."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from click.testing import CliRunner, Result

from models import migrations
from models.database import get_engine
from models.orm import Base
from models.settings import reset_settings
from tasks import cli
from tests.databases import temporary_database


def _drift(url: str) -> list:
    with get_engine(url).connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diffs = compare_metadata(context, Base.metadata)
        if connection.dialect.name == "sqlite":
            diffs = _without_reflection_blind_spots(diffs)
        return [diff for diff in diffs if not _other_dialects_index(diff, connection.dialect.name)]


def _other_dialects_index(diff: object, dialect: str) -> bool:
    """An index declared for another dialect only (`ddl_if`) is rightly absent here."""
    if not (isinstance(diff, tuple) and diff[0] == "add_index"):
        return False
    return diff[1].name in {
        index.name
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if getattr(index, "_ddl_if", None) is not None and index._ddl_if.dialect not in (None, dialect)
    }


def _without_reflection_blind_spots(diffs: list) -> list:
    """SQLite cannot reflect DESC or expression index elements, so an index it reads back
    differs from the declared one only in that; such remove/add pairs of one name are not drift."""
    changed = {}
    for diff in diffs:
        if isinstance(diff, tuple) and diff[0] in ("add_index", "remove_index"):
            changed.setdefault(diff[1].name, set()).add(diff[0])
    paired = {name for name, kinds in changed.items() if kinds == {"add_index", "remove_index"}}
    return [
        diff
        for diff in diffs
        if not (isinstance(diff, tuple) and diff[0] in ("add_index", "remove_index") and diff[1].name in paired)
    ]


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    assert _drift(database_url) == []


def test_downgrade_to_base_then_upgrade_round_trips(tmp_path: Path) -> None:
    with temporary_database(tmp_path) as url:
        migrations.upgrade(url)
        assert migrations.current(url) is not None
        migrations.downgrade(url)
        with get_engine(url).connect() as connection:
            tables = set(sa.inspect(connection).get_table_names()) - {"alembic_version"}
        assert tables == set()
        migrations.upgrade(url)
        assert _drift(url) == []
        get_engine(url).dispose()


# -- the `flowruns db` commands: nothing drops a table by surprise ----------------------------


@pytest.fixture
def cli_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An empty database the `flowruns db` commands are pointed at (through the environment)."""
    with temporary_database(tmp_path) as url:
        monkeypatch.setenv("FLOWRUNS_DATABASE_URL", url)
        reset_settings()
        try:
            yield url
        finally:
            get_engine(url).dispose()
            monkeypatch.undo()
            reset_settings()


def flowruns(*arguments: str) -> Result:
    return CliRunner().invoke(cli.main, list(arguments))


def tables_of(url: str) -> set[str]:
    with get_engine(url).connect() as connection:
        return set(sa.inspect(connection).get_table_names())


def test_downgrade_needs_a_target_and_a_yes_and_refusals_change_nothing(cli_database: str) -> None:
    assert flowruns("db", "upgrade").exit_code == 0
    head, before = migrations.current(cli_database), tables_of(cli_database)

    no_target = flowruns("db", "downgrade")
    no_yes = flowruns("db", "downgrade", "base")  # no terminal here: refused, not asked

    assert no_target.exit_code == 2 and "name the revision to roll back to" in no_target.output
    assert no_yes.exit_code == 1 and "pass --yes" in no_yes.output and "every table is dropped" in no_yes.output
    assert migrations.current(cli_database) == head and tables_of(cli_database) == before
    assert flowruns("db", "downgrade", "0001", "--yes").exit_code == 0
    assert migrations.current(cli_database) == "0001"
    assert flowruns("db", "current").output.strip() == "0001"


def test_upgrade_sql_prints_the_migrations_and_runs_nothing(cli_database: str) -> None:
    result = flowruns("db", "upgrade", "--sql")

    assert result.exit_code == 0, result.output
    assert "CREATE TABLE flow_run" in result.output and "CREATE TABLE flow_run_state" in result.output
    assert tables_of(cli_database) == set()


def test_history_lists_every_revision_and_marks_the_applied_one(cli_database: str) -> None:
    assert flowruns("db", "upgrade", "0002").exit_code == 0

    output = flowruns("db", "history").output

    assert "0001" in output and "0002 (current)" in output.replace(" (head)", "")
