"""Alembic migrations, driven programmatically (no alembic.ini needed)."""

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from models.settings import get_settings

MIGRATIONS_DIR = Path(__file__).parent


def alembic_config(url: str | None = None) -> Config:
    config = Config(stdout=sys.stdout)  # the current stdout (Alembic's default is the one at import)
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    config.attributes["database_url"] = url or get_settings().database_url
    return config


def upgrade(url: str | None = None, revision: str = "head", sql: bool = False) -> None:
    """Apply migrations up to `revision`; with `sql`, print their SQL instead (nothing runs)."""
    command.upgrade(alembic_config(url), revision, sql=sql)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def history(url: str | None = None) -> None:
    """Print every revision, newest first, marking the applied one."""
    command.history(alembic_config(url), indicate_current=True)


def current(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from models.database import get_engine

    with get_engine(url or get_settings().database_url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
