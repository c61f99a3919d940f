"""The migrations build exactly the schema the models declare, and roll back cleanly."""

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from models import migrations
from models.database import get_engine
from models.orm import Base
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
