"""Alembic migrations, driven programmatically (no alembic.ini needed)."""

from pathlib import Path

from alembic import command
from alembic.config import Config

from models.settings import get_settings

MIGRATIONS_DIR = Path(__file__).parent


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.set_main_option("version_locations", str(MIGRATIONS_DIR / "versions"))
    config.attributes["database_url"] = url or get_settings().database_url
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def current(url: str | None = None) -> str | None:
    import sqlalchemy as sa
    from alembic.runtime.migration import MigrationContext

    from models.database import get_engine

    with get_engine(url or get_settings().database_url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
