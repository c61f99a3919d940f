"""The `flowruns` command: database migrations, the demo, benchmarks and chaos scenarios."""

import sys

import click

from models.settings import get_settings


@click.group()
def main() -> None:
    """flowruns: Prefect-compatible flow-run orchestration as a Celery worker."""


@main.group()
def db() -> None:
    """Apply or roll back the schema migrations on FLOWRUNS_DATABASE_URL."""


@db.command()
@click.option("--revision", default="head", show_default=True)
def upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from models import migrations

    migrations.upgrade(revision=revision)
    click.echo(f"database at {migrations.current()} ({_safe_url()})")


@db.command()
@click.option("--revision", default="base", show_default=True)
def downgrade(revision: str) -> None:
    """Roll migrations back to REVISION (base drops every table)."""
    from models import migrations

    migrations.downgrade(revision=revision)
    click.echo(f"database at {migrations.current() or 'base'} ({_safe_url()})")


@db.command()
def current() -> None:
    """Print the applied revision."""
    from models import migrations

    click.echo(migrations.current() or "base")


def _safe_url() -> str:
    """The database URL with its password hidden, fit for output."""
    from sqlalchemy.engine import make_url

    return make_url(get_settings().database_url).render_as_string(hide_password=True)


@main.command()
@click.option("--runs", default=8, show_default=True, help="flow runs in the deployment")
@click.option("--database", default=None, help="SQLite file (default: a fresh temporary file)")
def demo(runs: int, database: str | None) -> None:
    """Run an in-process worker on an in-memory broker and drive a realistic workload."""
    from tasks.demo import run_demo

    sys.exit(run_demo(runs=runs, database=database))


@main.group()
def bench() -> None:
    """Measure throughput and latency on the configured PostgreSQL (and Redis)."""


@bench.command("models")
@click.option("--sizes", default="10000,100000", show_default=True, help="table sizes for read/count latency")
@click.option("--transitions", default=1000, show_default=True, help="runs driven through a full life")
@click.option("--json", "as_json", is_flag=True, help="print the figures as JSON")
def bench_models(sizes: str, transitions: int, as_json: bool) -> None:
    """In-process creates/s, transitions/s, deletes/s, read/count latency."""
    from tasks.bench import run_models_bench

    run_models_bench([int(s) for s in sizes.split(",") if s], transitions, as_json)


@bench.command("limit")
@click.option("--seconds", default=5.0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_limit(seconds: float, as_json: bool) -> None:
    """PostgreSQL's single-row commit rate on this machine: the physical ceiling."""
    from tasks.bench import run_limit_bench

    run_limit_bench(seconds, as_json)


if __name__ == "__main__":
    main()
