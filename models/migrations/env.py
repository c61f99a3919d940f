"""Alembic environment: the URL comes from the caller or the settings object."""

from alembic import context

from models.database import get_engine
from models.orm import Base
from models.settings import get_settings

config = context.config
url = config.attributes.get("database_url") or get_settings().database_url


def run_migrations() -> None:
    engine = get_engine(url)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations()
